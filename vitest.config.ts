import { defineConfig } from 'vitest/config';

// Three projects: every test on this machine as it is, and the tests with GPU cases again on the emulated
// CUDA device (METAFORMER_EMULATE_CUDA=1: 'cuda' tensors in host memory, the cpu kernels behind the cuda
// backend), so the device plumbing of tensors, models and training is exercised without a GPU. On a
// machine with a GPU (and an addon built with CUDA) the first project runs those cases on the real device.
// Device plans run as recorded graphs there (the default, as on a GPU); the third project runs the device
// and fixture tests once more with graphs off (METAFORMER_CUDA_GRAPHS=0: plans step by step).
const GPU_CASES = ['test/core/device.test.ts', 'test/models/fixtures.test.ts', 'test/train/trainer.test.ts', 'test/cli/device.test.ts'];

export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: 'host', include: ['test/**/*.test.ts'] } },
      { extends: true, test: { name: 'emulated-cuda', include: GPU_CASES, env: { METAFORMER_EMULATE_CUDA: '1' } } },
      {
        extends: true,
        test: { name: 'emulated-cuda-stepwise', include: GPU_CASES.slice(0, 2), env: { METAFORMER_EMULATE_CUDA: '1', METAFORMER_CUDA_GRAPHS: '0' } },
      },
    ],
  },
});

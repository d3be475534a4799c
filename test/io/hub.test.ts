/**
 * Weight downloads against a local HTTP server on 127.0.0.1 (nothing here touches the internet): redirects,
 * resuming with Range after a dropped connection, size and hash checks, sha256 sidecars verified on cache hits,
 * offline mode, the cache folder rules, and pretrained models built from a downloaded checkpoint.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createPretrained, defaultCacheDir, fetchWeights, resolveWeights, type DownloadProgress } from '../../lib/io/hub.js';
import { createModel } from '../../lib/models/index.js';
import type { Tensor } from '../../lib/tensor.js';
import { fixturePath } from '../helpers/fixtures.js';
import { loadFixture, relL2, type Fixture } from '../helpers/tensors.js';

const TINY = { family: 'caformer' as const, depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], numClasses: 10, imageSize: 64 };

let body: Buffer;
let bodyHash: string;
let server: http.Server;
let base: string;
let tmp: string;
/** Every request the server saw: path and Range header. */
const seen: { path: string; range: string | undefined; ifRange: string | undefined }[] = [];
const ETAG = '"tiny-v1"';
const flakyServed = new Set<string>();

function sendRange(req: http.IncomingMessage, res: http.ServerResponse): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    const start = Number(m[1]);
    if (start >= body.length) {
      res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      return;
    }
    res.writeHead(206, { 'content-length': body.length - start, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}`, etag: ETAG });
    res.end(body.subarray(start));
    return;
  }
  res.writeHead(200, { 'content-length': body.length, etag: ETAG }).end(body);
}

/** Declares the full length, sends the first `n` bytes, then drops the connection. */
function sendCut(res: http.ServerResponse, n: number): void {
  res.writeHead(200, { 'content-length': body.length, etag: ETAG });
  res.write(body.subarray(0, n), () => setTimeout(() => res.socket?.destroy(), 20));
}

beforeAll(async () => {
  body = fs.readFileSync(fixturePath('checkpoints', 'caformer_tiny.pth'));
  bodyHash = createHash('sha256').update(body).digest('hex');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-hub-'));
  server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    seen.push({ path: url, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined });
    let m: RegExpMatchArray | null;
    if ((m = url.match(/^\/redirect\/(\d+)\/(.+)$/))) {
      const n = Number(m[1]);
      res.writeHead(n % 2 ? 302 : 307, { location: n > 1 ? `/redirect/${n - 1}/${m[2]}` : `/files/${m[2]}` }).end();
    } else if (url === '/loop/w.pth') {
      res.writeHead(301, { location: '/loop/w.pth' }).end();
    } else if (url.startsWith('/files/')) {
      sendRange(req, res);
    } else if (url.startsWith('/flaky/')) {
      // The first request for each path breaks off midway; later ones honour Range.
      if (!flakyServed.has(url)) {
        flakyServed.add(url);
        sendCut(res, Math.floor(body.length / 3));
      } else {
        sendRange(req, res);
      }
    } else if (url.startsWith('/short/')) {
      sendCut(res, 1000);
    } else if (url.startsWith('/norange/')) {
      res.writeHead(200, { 'content-length': body.length }).end(body);
    } else if (url.startsWith('/broken/')) {
      res.writeHead(500).end('oops');
    } else {
      res.writeHead(404).end('not here');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});

afterEach(() => {
  vi.unstubAllEnvs();
  vi.restoreAllMocks();
});

let dirCount = 0;
function freshDir(): string {
  return path.join(tmp, `cache${++dirCount}`);
}

function requestsTo(prefix: string): number {
  return seen.filter((s) => s.path.startsWith(prefix)).length;
}

describe('fetchWeights', () => {
  it('downloads into the cache with a sha256 sidecar and leaves nothing else behind', async () => {
    const cacheDir = freshDir();
    const progress: DownloadProgress[] = [];
    const file = await fetchWeights(`${base}/files/caformer_tiny.pth`, { cacheDir, onProgress: (p) => progress.push(p), progress: false });
    expect(file).toBe(path.join(cacheDir, 'caformer_tiny.pth'));
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    expect(fs.readFileSync(`${file}.sha256`, 'utf8')).toBe(`${bodyHash}  caformer_tiny.pth\n`);
    expect(fs.readdirSync(cacheDir).sort()).toEqual(['caformer_tiny.pth', 'caformer_tiny.pth.sha256']);
    expect(progress.at(-1)).toMatchObject({ received: body.length, total: body.length });
  });

  it('serves later calls from the cache without the network, verifying the hash', async () => {
    const cacheDir = freshDir();
    const url = `${base}/files/cached.pth`;
    await fetchWeights(url, { cacheDir, progress: false });
    const before = requestsTo('/files/cached.pth');
    expect(before).toBe(1);
    expect(await fetchWeights(url, { cacheDir, progress: false })).toBe(path.join(cacheDir, 'cached.pth'));
    expect(await fetchWeights(url, { cacheDir, offline: true, sha256: bodyHash })).toBe(path.join(cacheDir, 'cached.pth'));
    expect(requestsTo('/files/cached.pth')).toBe(before);
  });

  it('detects a corrupted cache entry: offline it is an error, online it is downloaded again', async () => {
    const cacheDir = freshDir();
    const url = `${base}/files/corrupt.pth`;
    const file = await fetchWeights(url, { cacheDir, progress: false });
    const bytes = fs.readFileSync(file);
    bytes[100] = bytes[100]! ^ 0xff;
    fs.writeFileSync(file, bytes);
    await expect(fetchWeights(url, { cacheDir, offline: true })).rejects.toThrow(/offline mode: .*differs from the one recorded at download/);
    await fetchWeights(url, { cacheDir, progress: false });
    expect(requestsTo('/files/corrupt.pth')).toBe(2);
    expect(fs.readFileSync(file).equals(body)).toBe(true);
  });

  it('follows up to 5 redirects and refuses more', async () => {
    const file = await fetchWeights(`${base}/redirect/5/redirected.pth`, { cacheDir: freshDir(), progress: false });
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    expect(requestsTo('/files/redirected.pth')).toBe(1);
    await expect(fetchWeights(`${base}/redirect/6/toofar.pth`, { cacheDir: freshDir(), progress: false }))
      .rejects.toThrow(/too many redirects \(more than 5\)/);
    await expect(fetchWeights(`${base}/loop/w.pth`, { cacheDir: freshDir(), progress: false })).rejects.toThrow(/too many redirects/);
  });

  it('keeps a broken-off download as .part and resumes it with Range on the next call', async () => {
    const cacheDir = freshDir();
    const url = `${base}/flaky/resume.pth`;
    await expect(fetchWeights(url, { cacheDir, retries: 0, progress: false }))
      .rejects.toThrow(/download failed after 1 attempt: .*broke off after \d+ of \d+ bytes.*next call resumes/);
    const part = path.join(cacheDir, 'resume.pth.part');
    const got = fs.statSync(part).size;
    expect(got).toBeGreaterThan(0);
    expect(got).toBeLessThan(body.length);
    expect(fs.existsSync(path.join(cacheDir, 'resume.pth'))).toBe(false);
    expect(JSON.parse(fs.readFileSync(`${part}.json`, 'utf8'))).toEqual({ url, total: body.length, validator: ETAG });
    const file = await fetchWeights(url, { cacheDir, progress: false });
    expect(seen.filter((s) => s.path === '/flaky/resume.pth').map((s) => [s.range, s.ifRange]))
      .toEqual([[undefined, undefined], [`bytes=${got}-`, ETAG]]);
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    expect(fs.existsSync(part)).toBe(false);
    expect(fs.existsSync(`${part}.json`)).toBe(false);
  });

  it('resumes automatically within one call', async () => {
    const file = await fetchWeights(`${base}/flaky/auto.pth`, { cacheDir: freshDir(), progress: false });
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    const ranges = seen.filter((s) => s.path === '/flaky/auto.pth').map((s) => s.range);
    expect(ranges.length).toBe(2);
    expect(ranges[1]).toMatch(/^bytes=\d+-$/);
  });

  it('starts over when the server ignores Range', async () => {
    const cacheDir = freshDir();
    const url = `${base}/norange/norange.pth`;
    fs.mkdirSync(cacheDir);
    fs.writeFileSync(path.join(cacheDir, 'norange.pth.part'), body.subarray(0, 100));
    fs.writeFileSync(path.join(cacheDir, 'norange.pth.part.json'), JSON.stringify({ url, total: body.length, validator: null }));
    const file = await fetchWeights(url, { cacheDir, progress: false });
    expect(seen.filter((s) => s.path === '/norange/norange.pth').map((s) => s.range)).toEqual(['bytes=100-']);
    expect(fs.readFileSync(file).equals(body)).toBe(true);
  });

  it('never resumes a .part that belongs to another URL or has no record', async () => {
    const cacheDir = freshDir();
    fs.mkdirSync(cacheDir);
    const part = path.join(cacheDir, 'foreign.pth.part');
    fs.writeFileSync(part, Buffer.from('bytes of some other file'));
    fs.writeFileSync(`${part}.json`, JSON.stringify({ url: 'http://elsewhere.invalid/foreign.pth', total: body.length, validator: null }));
    const file = await fetchWeights(`${base}/files/foreign.pth`, { cacheDir, progress: false });
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    fs.rmSync(file);
    fs.writeFileSync(part, Buffer.from('orphaned bytes'));
    await fetchWeights(`${base}/files/foreign.pth`, { cacheDir, progress: false });
    expect(fs.readFileSync(file).equals(body)).toBe(true);
    expect(seen.filter((s) => s.path === '/files/foreign.pth').map((s) => s.range)).toEqual([undefined, undefined]);
  });

  it('rejects a transfer shorter than its declared size and leaves no complete-looking file', async () => {
    const cacheDir = freshDir();
    await expect(fetchWeights(`${base}/short/short.pth`, { cacheDir, retries: 1, progress: false }))
      .rejects.toThrow(new RegExp(`download failed after 2 attempts: .*of ${body.length} bytes`));
    expect(fs.existsSync(path.join(cacheDir, 'short.pth'))).toBe(false);
    expect(fs.existsSync(path.join(cacheDir, 'short.pth.sha256'))).toBe(false);
    expect(fs.existsSync(path.join(cacheDir, 'short.pth.part.json'))).toBe(true);
    expect(fs.statSync(path.join(cacheDir, 'short.pth.part')).size).toBeLessThan(body.length);
  });

  it('discards a download whose sha256 is not the expected one', async () => {
    const cacheDir = freshDir();
    const wrong = '0'.repeat(64);
    await expect(fetchWeights(`${base}/files/hashed.pth`, { cacheDir, sha256: wrong, progress: false }))
      .rejects.toThrow(`sha256 mismatch: expected ${wrong} but the download has ${bodyHash}`);
    expect(fs.readdirSync(cacheDir)).toEqual([]);
    const file = await fetchWeights(`${base}/files/hashed.pth`, { cacheDir, sha256: bodyHash.toUpperCase(), progress: false });
    expect(fs.readFileSync(file).equals(body)).toBe(true);
  });

  it('reports HTTP errors, retrying server errors', async () => {
    await expect(fetchWeights(`${base}/nothing/here.pth`, { cacheDir: freshDir(), progress: false })).rejects.toThrow(/HTTP 404/);
    const before = requestsTo('/broken/');
    await expect(fetchWeights(`${base}/broken/b.pth`, { cacheDir: freshDir(), retries: 2, progress: false }))
      .rejects.toThrow(/download failed after 3 attempts: .*HTTP 500/);
    expect(requestsTo('/broken/') - before).toBe(3);
  });

  it('never touches the network offline (option or METAFORMER_OFFLINE=1)', async () => {
    const count = seen.length;
    await expect(fetchWeights(`${base}/files/offline.pth`, { cacheDir: freshDir(), offline: true }))
      .rejects.toThrow(/offline mode: the weights for .* are not usable from the cache \(not in the cache\)/);
    vi.stubEnv('METAFORMER_OFFLINE', '1');
    await expect(fetchWeights('caformer_s18', { cacheDir: freshDir() })).rejects.toThrow(/offline mode: the weights for caformer_s18/);
    expect(seen.length).toBe(count);
  });

  it('draws a progress bar on stderr when asked', async () => {
    const writes: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      writes.push(String(chunk));
      return true;
    });
    await fetchWeights(`${base}/files/bar.pth`, { cacheDir: freshDir(), progress: true });
    vi.restoreAllMocks();
    const text = writes.join('');
    expect(text).toContain('bar.pth');
    expect(text).toContain('100.0%');
    expect(text).toMatch(/\/s/);
    expect(text.endsWith('\n')).toBe(true);
  });

  it('validates its arguments', async () => {
    await expect(fetchWeights('', {})).rejects.toThrow('Expected a model name or an http(s) URL for weights but received ""');
    await expect(fetchWeights('caformer_s99', {})).rejects.toThrow(/Expected an official model name .*did you mean/);
    await expect(fetchWeights(`${base}/files/x.pth`, { sha256: 'abc' })).rejects.toThrow('Expected 64 hexadecimal digits for sha256 but received "abc"');
    await expect(fetchWeights(`${base}/`, { cacheDir: freshDir() })).rejects.toThrow(/Expected a URL ending in a file name/);
    await expect(fetchWeights(`${base}/files/x.pth`, { retries: -1 })).rejects.toThrow(/non-negative integer for retries/);
  });
});

describe('cache location', () => {
  it('follows cacheDir, then METAFORMER_CACHE, then XDG_CACHE_HOME, then ~/.cache', () => {
    expect(defaultCacheDir({ METAFORMER_CACHE: '/a/b', XDG_CACHE_HOME: '/x' })).toBe(path.resolve('/a/b'));
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x' })).toBe(path.join(path.resolve('/x'), 'metaformer'));
    expect(defaultCacheDir({})).toBe(path.join(os.homedir(), '.cache', 'metaformer'));
    vi.stubEnv('METAFORMER_CACHE', path.join(tmp, 'env-cache'));
    expect(resolveWeights('caformer_s18').file).toBe(path.join(tmp, 'env-cache', 'caformer_s18.pth'));
    expect(resolveWeights('caformer_s18', { cacheDir: path.join(tmp, 'opt') }).file).toBe(path.join(tmp, 'opt', 'caformer_s18.pth'));
    expect(resolveWeights('caformer_s18').url).toMatch(/^https:\/\/.*caformer_s18\.pth$/);
  });
});

describe('pretrained models', () => {
  let fx: Fixture;
  beforeAll(async () => {
    fx = await loadFixture('models', 'caformer_tiny.safetensors');
  });
  afterAll(() => {
    for (const t of fx.tensors.values()) t.dispose();
  });

  async function logitsError(model: { predict(x: Tensor): Promise<Tensor> }): Promise<number> {
    const logits = await model.predict(fx.get('input'));
    const err = relL2(logits.toFloat32Array(), fx.get('logits').toFloat32Array());
    logits.dispose();
    return err;
  }

  it('createPretrained downloads, loads and matches the fixture logits; numClasses replaces the head', async () => {
    const cacheDir = freshDir();
    const weights = `${base}/files/caformer_tiny.pth`;
    const model = await createPretrained(TINY, { weights, cacheDir, progress: false });
    expect(model.training).toBe(false);
    expect(await logitsError(model)).toBeLessThan(3e-5);
    model.dispose();
    const ft = await createPretrained(TINY, { weights, cacheDir, offline: true, numClasses: 3 });
    expect(ft.numClasses).toBe(3);
    const head = ft.stateDict().get('head.fc2.weight')!;
    expect(head.shape).toEqual([3, 256]);
    // the model is built without random draws (the load overwrites them); the replaced head is drawn
    const drawn = head.toFloat32Array();
    expect(drawn.some((v) => v !== 0)).toBe(true);
    expect(Math.max(...drawn.map(Math.abs))).toBeLessThan(0.1);  // trunc_normal(std .02)
    ft.dispose();
  });

  it('createModel({ pretrained }) returns a promise of the loaded model (URL or local path)', async () => {
    const cacheDir = freshDir();
    const fromUrl = await createModel(TINY, { pretrained: `${base}/redirect/2/caformer_tiny.pth`, cacheDir, progress: false });
    expect(await logitsError(fromUrl)).toBeLessThan(3e-5);
    fromUrl.dispose();
    const fromFile = await createModel(TINY, { pretrained: fixturePath('checkpoints', 'caformer_tiny_timm.safetensors') });
    expect(await logitsError(fromFile)).toBeLessThan(3e-5);
    fromFile.dispose();
    expect(() => createModel(TINY, { pretrained: 5 as unknown as string })).toThrow('Expected true, a checkpoint path or a URL for pretrained but received 5');
    await expect(createPretrained(TINY, {})).rejects.toThrow(/Expected a registry model with pretrained weights, or the weights option/);
  });
});

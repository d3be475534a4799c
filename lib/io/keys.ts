/**
 * State-dict key conventions: detection and mapping to the official (sail-sg/metaformer) names.
 *
 * Two conventions exist for the MetaFormer baselines:
 *  - official: `downsample_layers.i.{conv,pre_norm,post_norm}.*`, `stages.i.j.*`, `norm.*`, `head.*`
 *    (Linear heads: `head.weight`; MlpHead: `head.fc1/norm/fc2.*`).
 *  - timm (`timm.models.metaformer`, after its `checkpoint_filter_fn`): `stem.{conv,norm}.*`,
 *    `stages.i.downsample.{conv,norm}.*`, `stages.i.blocks.j.*`, `head.norm.*` (the output norm),
 *    `head.fc.*` (Linear head) or `head.fc.{fc1,norm,fc2}.*` (MlpHead). timm runs the non-attention stages
 *    channels-first, so the block Linears there are 1x1 convs with weights [out, in, 1, 1].
 * Block internals share their names in both conventions (`norm1`, `token_mixer.*`, `res_scale1.scale`,
 * `layer_scale1.scale`, `mlp.*`, StarReLU `scale`/`bias`), and so do their shapes, except those 1x1 convs.
 * Wrappers add a prefix to every key: `module.` (DataParallel / DistributedDataParallel) and `_orig_mod.`
 * (torch.compile); both are stripped.
 *
 * Every function here is pure: the input map is never modified and tensors are never copied. A renamed
 * entry holds the same Tensor object; a reshaped entry (1x1 conv <-> Linear) holds a new Tensor that shares
 * the memory of the input one (a zero-copy view), so disposing either leaves the other valid.
 */
import { reshape } from '../ops.js';
import { expectation, Tensor } from '../tensor.js';

export type KeyConvention = 'official' | 'timm';

export interface KeyDetection {
  /** The convention found, or 'unknown' when no key names a MetaFormer part this module knows. */
  convention: KeyConvention | 'unknown' | 'mixed';
  /** The wrapper prefix present on every key (e.g. 'module.'), or '' when none. */
  prefix: string;
  /** A key that decided the convention (or, for 'mixed', one key of each convention). */
  evidence: string[];
}

export interface MappedStateDict {
  /** The tensors under official names, in the input order. */
  stateDict: Map<string, Tensor>;
  /** What the input looked like. */
  detected: KeyDetection;
  /** Keys whose name changed: [input name, official name]. */
  renamed: [string, string][];
  /** Official names of the tensors reshaped from [out, in, 1, 1] to [out, in]. */
  reshaped: string[];
}

/** Wrapper prefixes, outermost first (torch.compile inside DataParallel gives `module._orig_mod.`). */
export const WRAPPER_PREFIXES: readonly string[] = ['module.', '_orig_mod.'];

const OFFICIAL_PATTERNS: readonly RegExp[] = [/^downsample_layers\.\d+\./, /^stages\.\d+\.\d+\./];
const TIMM_PATTERNS: readonly RegExp[] = [/^stem\./, /^stages\.\d+\.blocks\.\d+\./, /^stages\.\d+\.downsample\./, /^head\.fc\./];

/** The Linear layers inside a block that timm stores as 1x1 convs in channels-first stages. */
const BLOCK_LINEAR = /^stages\.(\d+)\.(\d+)\.(?:token_mixer\.(?:pwconv1|pwconv2)|mlp\.(?:fc1|fc2))\.weight$/;

function checkMap(sd: unknown, name: string): Map<string, Tensor> {
  if (!(sd instanceof Map)) throw new TypeError(expectation('a Map of name -> Tensor', name, sd));
  for (const [k, t] of sd) {
    if (typeof k !== 'string') throw new TypeError(expectation('string keys', name, k));
    if (!(t instanceof Tensor)) throw new TypeError(expectation(`a Tensor for key ${JSON.stringify(k)}`, name, t));
  }
  return sd as Map<string, Tensor>;
}

/** The wrapper prefix shared by every key (repeated wrappers are combined), or ''. */
export function commonPrefix(keys: readonly string[]): string {
  let prefix = '';
  if (keys.length === 0) return prefix;
  for (;;) {
    const next = WRAPPER_PREFIXES.find((p) => keys.every((k) => k.startsWith(prefix + p)));
    if (next === undefined) return prefix;
    prefix += next;
  }
}

/** Detects the key convention of a state dict (or of a list of its keys). */
export function detectConvention(keysOrMap: Iterable<string> | Map<string, unknown>): KeyDetection {
  const all = keysOrMap instanceof Map ? [...keysOrMap.keys()] : [...keysOrMap];
  if (all.some((k) => typeof k !== 'string')) throw new TypeError(expectation('string keys', 'keys', all.find((k) => typeof k !== 'string')));
  const prefix = commonPrefix(all);
  const keys = all.map((k) => k.slice(prefix.length));
  const official = keys.find((k) => OFFICIAL_PATTERNS.some((p) => p.test(k)));
  const timm = keys.find((k) => TIMM_PATTERNS.some((p) => p.test(k)));
  if (official !== undefined && timm !== undefined) return { convention: 'mixed', prefix, evidence: [official, timm] };
  if (official !== undefined) return { convention: 'official', prefix, evidence: [official] };
  if (timm !== undefined) return { convention: 'timm', prefix, evidence: [timm] };
  return { convention: 'unknown', prefix, evidence: [] };
}

/** Maps one timm key (no wrapper prefix) to its official name. Keys that timm and the official code share pass through. */
export function timmKeyToOfficial(key: string): string {
  let m: RegExpMatchArray | null;
  if ((m = key.match(/^stem\.conv\.(.+)$/))) return `downsample_layers.0.conv.${m[1]}`;
  if ((m = key.match(/^stem\.norm\.(.+)$/))) return `downsample_layers.0.post_norm.${m[1]}`;
  if ((m = key.match(/^stages\.(\d+)\.downsample\.conv\.(.+)$/))) return `downsample_layers.${m[1]}.conv.${m[2]}`;
  if ((m = key.match(/^stages\.(\d+)\.downsample\.norm\.(.+)$/))) return `downsample_layers.${m[1]}.pre_norm.${m[2]}`;
  if ((m = key.match(/^stages\.(\d+)\.blocks\.(\d+)\.(.+)$/))) return `stages.${m[1]}.${m[2]}.${m[3]}`;
  if ((m = key.match(/^head\.fc\.(fc1|fc2|norm)\.(.+)$/))) return `head.${m[1]}.${m[2]}`;
  if ((m = key.match(/^head\.fc\.(weight|bias)$/))) return `head.${m[1]}`;
  if ((m = key.match(/^head\.norm\.(.+)$/))) return `norm.${m[1]}`;
  return key;
}

/** Maps one official key to its timm name (the inverse of timmKeyToOfficial). */
export function officialKeyToTimm(key: string, opts: { mlpHead: boolean }): string {
  let m: RegExpMatchArray | null;
  if ((m = key.match(/^downsample_layers\.0\.conv\.(.+)$/))) return `stem.conv.${m[1]}`;
  if ((m = key.match(/^downsample_layers\.0\.post_norm\.(.+)$/))) return `stem.norm.${m[1]}`;
  if ((m = key.match(/^downsample_layers\.(\d+)\.conv\.(.+)$/))) return `stages.${m[1]}.downsample.conv.${m[2]}`;
  if ((m = key.match(/^downsample_layers\.(\d+)\.pre_norm\.(.+)$/))) return `stages.${m[1]}.downsample.norm.${m[2]}`;
  if ((m = key.match(/^stages\.(\d+)\.(\d+)\.(.+)$/))) return `stages.${m[1]}.blocks.${m[2]}.${m[3]}`;
  if ((m = key.match(/^norm\.(.+)$/))) return `head.norm.${m[1]}`;
  if (opts.mlpHead && (m = key.match(/^head\.(fc1|fc2|norm)\.(.+)$/))) return `head.fc.${m[1]}.${m[2]}`;
  if (!opts.mlpHead && (m = key.match(/^head\.(weight|bias)$/))) return `head.fc.${m[1]}`;
  return key;
}

/**
 * Renames a state dict to the official names: strips wrapper prefixes, maps timm names and turns timm's 1x1
 * conv weights [out, in, 1, 1] back into Linear weights [out, in]. An official state dict comes back with
 * the same tensors (a new Map). A dict that mixes both conventions, or whose mapping makes two keys collide,
 * is an error.
 */
export function toOfficial(sd: Map<string, Tensor>): MappedStateDict {
  checkMap(sd, 'stateDict');
  const detected = detectConvention(sd.keys());
  if (detected.convention === 'mixed') {
    throw new Error(`toOfficial: the state dict mixes official and timm key names (e.g. ${JSON.stringify(detected.evidence[0])} ` +
      `and ${JSON.stringify(detected.evidence[1])}); expected one convention`);
  }
  const timm = detected.convention === 'timm';
  const out = new Map<string, Tensor>();
  const renamed: [string, string][] = [];
  const reshaped: string[] = [];
  const origin = new Map<string, string>();
  for (const [key, t] of sd) {
    const bare = key.slice(detected.prefix.length);
    const name = timm ? timmKeyToOfficial(bare) : bare;
    const clash = origin.get(name);
    if (clash !== undefined) {
      throw new Error(`toOfficial: keys ${JSON.stringify(clash)} and ${JSON.stringify(key)} both map to ${JSON.stringify(name)}`);
    }
    origin.set(name, key);
    let value = t;
    if (timm && BLOCK_LINEAR.test(name) && t.ndim === 4 && t.shape[2] === 1 && t.shape[3] === 1) {
      value = reshape(t, [t.shape[0]!, t.shape[1]!]);
      reshaped.push(name);
    }
    if (name !== key) renamed.push([key, name]);
    out.set(name, value);
  }
  return { stateDict: out, detected, renamed, reshaped };
}

export interface ToTimmOptions {
  /**
   * Whether the head is an MlpHead (ConvFormer, CAFormer). Default: inferred from the keys
   * (`head.fc1.weight` present).
   */
  mlpHead?: boolean;
}

/**
 * Renames an official state dict to timm's names, writing the block Linears of stages without attention as
 * 1x1 conv weights [out, in, 1, 1], as timm's channels-first stages hold them. Input in timm names is an error.
 */
export function toTimm(sd: Map<string, Tensor>, opts: ToTimmOptions = {}): Map<string, Tensor> {
  checkMap(sd, 'stateDict');
  const detected = detectConvention(sd.keys());
  if (detected.convention === 'mixed' || detected.convention === 'timm') {
    throw new Error(`toTimm: expected a state dict with official key names but found ${detected.convention} names ` +
      `(e.g. ${JSON.stringify(detected.evidence[detected.evidence.length - 1])})`);
  }
  if (opts.mlpHead !== undefined && typeof opts.mlpHead !== 'boolean') throw new TypeError(expectation('a boolean', 'mlpHead', opts.mlpHead));
  const bare = new Map([...sd].map(([k, t]) => [k.slice(detected.prefix.length), t] as const));
  const mlpHead = opts.mlpHead ?? bare.has('head.fc1.weight');
  const attentionStages = new Set<string>();
  for (const k of bare.keys()) {
    const m = k.match(/^stages\.(\d+)\.\d+\.token_mixer\.qkv\.weight$/);
    if (m) attentionStages.add(m[1]!);
  }
  const out = new Map<string, Tensor>();
  for (const [key, t] of bare) {
    const m = key.match(BLOCK_LINEAR);
    const value = m && !attentionStages.has(m[1]!) && t.ndim === 2 ? reshape(t, [t.shape[0]!, t.shape[1]!, 1, 1]) : t;
    out.set(officialKeyToTimm(key, { mlpHead }), value);
  }
  return out;
}

/**
 * Disposes the tensors of `mapped` that are not in `original` (the views toOfficial/toTimm created), or,
 * with `all`, every tensor of both maps.
 */
export function disposeMapped(original: Map<string, Tensor>, mapped: Map<string, Tensor>, all = false): void {
  const keepSet = new Set(original.values());
  for (const t of mapped.values()) if (all || !keepSet.has(t)) t.dispose();
  if (all) for (const t of original.values()) t.dispose();
}


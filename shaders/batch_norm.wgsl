// 2-D batch normalisation, per channel c over its n = N*H*W values (PyTorch semantics).
//   training forward: mean_c    = sum(x) / n
//                     var_c     = sum((x - mean_c)^2) / n                 (biased)
//                     inv_std_c = 1 / sqrt(var_c + eps)
//                     y = (x - mean_c) * (gamma_c * inv_std_c) + beta_c    [then max(y, 0) if relu]
//                     running_mean = (1 - momentum) * running_mean + momentum * mean_c
//                     running_var  = (1 - momentum) * running_var
//                                    + momentum * sum((x - mean_c)^2) / max(n - 1, 1)
//   eval forward:     y = (x - running_mean) * gamma / sqrt(running_var + eps) + beta  [relu]
//   fold:             scale = gamma * inv_std, shift = beta - mean * scale
//   synchronised (sync-BN, several processes): `moments` writes each channel's local
//                     (mean, M2 = sum((x - mean)^2)); the host merges every rank's and
//                     `apply` writes y from the merged mean and inv_std; `backward_sums`
//                     writes the local (sum(g), sum(g * xhat)), the host sums them over the
//                     ranks, and `backward_apply` writes d_x from the totals and n = the
//                     global count.
//   backward:         xhat = (x - mean) * inv_std, g = d_y * [gamma * xhat + beta > 0 if relu]
//                     d_beta  += sum(g)
//                     d_gamma += sum(g * xhat)
//                     d_x     += gamma * inv_std * (g - sum(g) / n - xhat * sum(g * xhat) / n)
//
// Layout (all entry points but `fold`): one workgroup per channel (workgroup id folded as in
// Gpu::grid_1d). Its WG lanes stride over the channel's N*H*W values; each lane walks
// (b, s) = (batch item, position in the H*W plane) with a cursor advanced without
// divisions. Reductions: each lane accumulates its values in registers, then a fixed-order
// tree in workgroup memory combines the lanes (deterministic, no atomics). The training
// statistics take one read of x: each lane keeps Welford running moments (count, mean,
// sum of squared deviations), and lanes are merged with Chan's formula, so the variance
// never comes from the cancelling E[x^2] - E[x]^2.
// `*_v4` entry points move vec4 units (needs H*W, view offsets and batch strides to be
// multiples of 4); `*_v1` are the scalar fallback. The uniform's views and `hw` are in
// units of the entry point (f32 or vec4); per-channel tensors are plain f32 arrays at
// the offsets `*_off`.

override WG: u32 = 256; // lanes per workgroup, a power of two

struct Params {
    x: View,   // (N, C, H, W), in units
    y: View,   // (N, C, H, W) y (forward) or d_y (backward), in units
    d_x: View, // (N, C, H, W), in units (backward)
    batch: u32,    // N
    channels: u32, // C
    hw: u32,       // H*W in units
    units: u32,    // N * hw: units per channel
    count: f32,          // n = N*H*W values per channel
    count_unbiased: f32, // max(n - 1, 1)
    eps: f32,
    momentum: f32,
    relu: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    running_mean_off: u32,
    running_var_off: u32,
    d_gamma_off: u32, // also `scale` (fold)
    d_beta_off: u32,  // also `shift` (fold)
}

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<vec4<f32>, WG>;

// Sums `v` over the workgroup's lanes in a fixed order; every lane gets the total.
// Must be called in uniform control flow.
fn reduce_sum(li: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier(); // lanes are done reading the previous result in red[0]
    red[li] = vec4(v, 0.0, 0.0);
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (li < s) {
            red[li] += red[li + s];
        }
    }
    workgroupBarrier();
    return red[0].xy;
}

// Moments of a set of values: (count, mean, M2 = sum of squared deviations from the mean).
// Merging two sets (Chan et al.): d = mean_b - mean_a,
//   mean = mean_a + d * n_b / n,   M2 = M2_a + M2_b + d^2 * n_a * n_b / n.
fn merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let n = a.x + b.x;
    if (b.x == 0.0) {
        return a;
    }
    let d = b.y - a.y;
    let wb = b.x / n;
    return vec3(n, a.y + d * wb, a.z + b.z + d * d * a.x * wb);
}

// Merges every lane's moments in a fixed order; every lane gets the channel's moments.
// Must be called in uniform control flow.
fn reduce_moments(li: u32, v: vec3<f32>) -> vec3<f32> {
    workgroupBarrier(); // lanes are done reading the previous result in red[0]
    red[li] = vec4(v, 0.0);
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (li < s) {
            red[li] = vec4(merge(red[li].xyz, red[li + s].xyz), 0.0);
        }
    }
    workgroupBarrier();
    return red[0].xyz;
}

// Cursor over one channel's units: unit j = b * hw + s. Starting at lane li and stepping by
// WG = db * hw + ds, so advancing needs one compare instead of a division.
struct Walk {
    b: u32,
    s: u32,
    db: u32,
    ds: u32,
}

fn walk_start(li: u32) -> Walk {
    let b = li / p.hw;
    let db = WG / p.hw;
    return Walk(b, li - b * p.hw, db, WG - db * p.hw);
}

fn walk_next(w: Walk) -> Walk {
    var r = w;
    r.s += w.ds;
    r.b += w.db;
    if (r.s >= p.hw) {
        r.s -= p.hw;
        r.b += 1u;
    }
    return r;
}

// Index of the current unit of channel c in a view.
fn at(v: View, c: u32, w: Walk) -> u32 {
    return v.offset + w.b * v.batch_stride + c * p.hw + w.s;
}

fn channel_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// ---------------------------------------------------------------------------------------
// training forward: `train_*` (statistics, running stats, y) and `stats_*` (no y)

@group(0) @binding(1) var<storage, read> tr_x: array<f32>;               // (N, C, H, W) via p.x
@group(0) @binding(1) var<storage, read> tr4_x: array<vec4<f32>>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read> tr_gamma: array<f32>;           // (C)
@group(0) @binding(3) var<storage, read> tr_beta: array<f32>;            // (C)
@group(0) @binding(4) var<storage, read_write> tr_mean: array<f32>;      // (C)
@group(0) @binding(5) var<storage, read_write> tr_inv_std: array<f32>;   // (C)
@group(0) @binding(6) var<storage, read_write> tr_run_mean: array<f32>;  // (C)
@group(0) @binding(7) var<storage, read_write> tr_run_var: array<f32>;   // (C)
@group(0) @binding(8) var<storage, read_write> tr_y: array<f32>;         // (N, C, H, W) via p.y
@group(0) @binding(8) var<storage, read_write> tr4_y: array<vec4<f32>>;  // (N, C, H, W) via p.y

// Returns (mean, inv_std) of channel c. Each lane keeps running moments of its values
// (Welford: one read of x, no cancellation), then the lanes' moments are merged.
fn stats_of_v1(li: u32, c: u32) -> vec2<f32> {
    return finish_stats(li, c, lane_moments_v1(li, c));
}

fn stats_of_v4(li: u32, c: u32) -> vec2<f32> {
    return finish_stats(li, c, lane_moments_v4(li, c));
}

// This lane's (count, mean, M2) over its values of channel c.
fn lane_moments_v1(li: u32, c: u32) -> vec3<f32> {
    var k = 0.0;
    var m = 0.0;
    var m2 = 0.0;
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let v = tr_x[at(p.x, c, w)];
        k += 1.0;
        let d = v - m;
        m += d / k;
        m2 += d * (v - m);
        w = walk_next(w);
    }
    return vec3(k, m, m2);
}

fn lane_moments_v4(li: u32, c: u32) -> vec3<f32> {
    var k = 0.0;
    var m = vec4(0.0);
    var m2 = vec4(0.0);
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let v = tr4_x[at(p.x, c, w)];
        k += 1.0;
        let d = v - m;
        m += d * (1.0 / k); // one division for the four components
        m2 += d * (v - m);
        w = walk_next(w);
    }
    // The four components are four sets of k values each.
    return merge(merge(vec3(k, m.x, m2.x), vec3(k, m.y, m2.y)),
                 merge(vec3(k, m.z, m2.z), vec3(k, m.w, m2.w)));
}

// Merges the lanes' moments; lane 0 stores the statistics of channel c and updates the
// running ones. Returns (mean, inv_std).
fn finish_stats(li: u32, c: u32, lane: vec3<f32>) -> vec2<f32> {
    let all = reduce_moments(li, lane);
    let mean = all.y;
    let sq = all.z; // sum over the channel of (x - mean)^2
    let inv_std = 1.0 / sqrt(sq / p.count + p.eps);
    if (li == 0u) {
        tr_mean[p.mean_off + c] = mean;
        tr_inv_std[p.inv_std_off + c] = inv_std;
        let mo = p.momentum;
        let rm = p.running_mean_off + c;
        let rv = p.running_var_off + c;
        tr_run_mean[rm] = (1.0 - mo) * tr_run_mean[rm] + mo * mean;
        tr_run_var[rv] = (1.0 - mo) * tr_run_var[rv] + mo * (sq / p.count_unbiased);
    }
    return vec2(mean, inv_std);
}

@compute @workgroup_size(WG)
fn stats_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    _ = stats_of_v1(li, c);
}

@compute @workgroup_size(WG)
fn stats_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    _ = stats_of_v4(li, c);
}

// y = (x - mean) * (gamma * inv_std) + beta over channel c (then max(., 0) if relu).
fn write_y_v1(li: u32, c: u32, mean: f32, inv_std: f32) {
    let scale = tr_gamma[p.gamma_off + c] * inv_std;
    let shift = tr_beta[p.beta_off + c];
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        var v = (tr_x[at(p.x, c, w)] - mean) * scale + shift;
        if (p.relu != 0u) { v = max(v, 0.0); }
        tr_y[at(p.y, c, w)] = v;
        w = walk_next(w);
    }
}

@compute @workgroup_size(WG)
fn train_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let st = stats_of_v1(li, c);
    write_y_v1(li, c, st.x, st.y);
}

// y = (x - mean) * (gamma * inv_std) + beta over channel c (then max(., 0) if relu).
fn write_y_v4(li: u32, c: u32, mean: f32, inv_std: f32) {
    let scale = tr_gamma[p.gamma_off + c] * inv_std;
    let shift = tr_beta[p.beta_off + c];
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        var v = (tr4_x[at(p.x, c, w)] - mean) * scale + shift;
        if (p.relu != 0u) { v = max(v, vec4(0.0)); }
        tr4_y[at(p.y, c, w)] = v;
        w = walk_next(w);
    }
}

@compute @workgroup_size(WG)
fn train_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let st = stats_of_v4(li, c);
    write_y_v4(li, c, st.x, st.y);
}

// Synchronised statistics: this rank's (mean, M2) of channel c into (mean, inv_std)'s
// buffers; the running statistics are left alone (the host updates them).
fn store_moments(li: u32, c: u32, lane: vec3<f32>) {
    let all = reduce_moments(li, lane);
    if (li == 0u) {
        tr_mean[p.mean_off + c] = all.y;
        tr_inv_std[p.inv_std_off + c] = all.z;
    }
}

@compute @workgroup_size(WG)
fn moments_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    store_moments(li, c, lane_moments_v1(li, c));
}

@compute @workgroup_size(WG)
fn moments_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    store_moments(li, c, lane_moments_v4(li, c));
}

// y from given (mean, inv_std), as `train_*` writes it.
@compute @workgroup_size(WG)
fn apply_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    write_y_v1(li, c, tr_mean[p.mean_off + c], tr_inv_std[p.inv_std_off + c]);
}

@compute @workgroup_size(WG)
fn apply_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    write_y_v4(li, c, tr_mean[p.mean_off + c], tr_inv_std[p.inv_std_off + c]);
}

// ---------------------------------------------------------------------------------------
// eval forward

@group(0) @binding(1) var<storage, read> ev_x: array<f32>;               // (N, C, H, W) via p.x
@group(0) @binding(1) var<storage, read> ev4_x: array<vec4<f32>>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read> ev_gamma: array<f32>;           // (C)
@group(0) @binding(3) var<storage, read> ev_beta: array<f32>;            // (C)
@group(0) @binding(4) var<storage, read> ev_run_mean: array<f32>;        // (C)
@group(0) @binding(5) var<storage, read> ev_run_var: array<f32>;         // (C)
@group(0) @binding(6) var<storage, read_write> ev_y: array<f32>;         // (N, C, H, W) via p.y
@group(0) @binding(6) var<storage, read_write> ev4_y: array<vec4<f32>>;  // (N, C, H, W) via p.y

// (mean, scale, shift) of channel c from the running statistics.
fn eval_coeffs(c: u32) -> vec3<f32> {
    let inv_std = 1.0 / sqrt(ev_run_var[p.running_var_off + c] + p.eps);
    return vec3(ev_run_mean[p.running_mean_off + c], ev_gamma[p.gamma_off + c] * inv_std,
                ev_beta[p.beta_off + c]);
}

@compute @workgroup_size(WG)
fn eval_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let k = eval_coeffs(c);
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        var v = (ev_x[at(p.x, c, w)] - k.x) * k.y + k.z;
        if (p.relu != 0u) { v = max(v, 0.0); }
        ev_y[at(p.y, c, w)] = v;
        w = walk_next(w);
    }
}

@compute @workgroup_size(WG)
fn eval_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let k = eval_coeffs(c);
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        var v = (ev4_x[at(p.x, c, w)] - k.x) * k.y + k.z;
        if (p.relu != 0u) { v = max(v, vec4(0.0)); }
        ev4_y[at(p.y, c, w)] = v;
        w = walk_next(w);
    }
}

// ---------------------------------------------------------------------------------------
// fold: one invocation per channel

@group(0) @binding(1) var<storage, read> fo_gamma: array<f32>;      // (C)
@group(0) @binding(2) var<storage, read> fo_beta: array<f32>;       // (C)
@group(0) @binding(3) var<storage, read> fo_mean: array<f32>;       // (C)
@group(0) @binding(4) var<storage, read> fo_inv_std: array<f32>;    // (C)
@group(0) @binding(5) var<storage, read_write> fo_scale: array<f32>; // (C) at p.d_gamma_off
@group(0) @binding(6) var<storage, read_write> fo_shift: array<f32>; // (C) at p.d_beta_off

@compute @workgroup_size(WG)
fn fold(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let c = linear_id(wg, nwg, li, WG);
    if (c >= p.channels) { return; }
    let scale = fo_gamma[p.gamma_off + c] * fo_inv_std[p.inv_std_off + c];
    fo_scale[p.d_gamma_off + c] = scale;
    fo_shift[p.d_beta_off + c] = fo_beta[p.beta_off + c] - fo_mean[p.mean_off + c] * scale;
}

// ---------------------------------------------------------------------------------------
// backward

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;                // (N, C, H, W) via p.x
@group(0) @binding(1) var<storage, read> bw4_x: array<vec4<f32>>;         // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read> bw_d_y: array<f32>;              // (N, C, H, W) via p.y
@group(0) @binding(2) var<storage, read> bw4_d_y: array<vec4<f32>>;       // (N, C, H, W) via p.y
@group(0) @binding(3) var<storage, read> bw_gamma: array<f32>;            // (C)
@group(0) @binding(4) var<storage, read> bw_beta: array<f32>;             // (C)
@group(0) @binding(5) var<storage, read> bw_mean: array<f32>;             // (C)
@group(0) @binding(6) var<storage, read> bw_inv_std: array<f32>;          // (C)
@group(0) @binding(7) var<storage, read_write> bw_d_x: array<f32>;        // (N, C, H, W) via p.d_x
@group(0) @binding(7) var<storage, read_write> bw4_d_x: array<vec4<f32>>; // (N, C, H, W) via p.d_x
@group(0) @binding(8) var<storage, read_write> bw_d_gamma: array<f32>;    // (C)
@group(0) @binding(9) var<storage, read_write> bw_d_beta: array<f32>;     // (C)
// Synchronised backward: (sum g, sum g*xhat) per channel, as [C] then [C].
@group(0) @binding(10) var<storage, read_write> bw_sums_out: array<f32>;  // (2C) local
@group(0) @binding(10) var<storage, read> bw_sums_in: array<f32>;         // (2C) all ranks

// Per-channel constants of the backward pass.
struct BwdChannel {
    mean: f32,
    inv_std: f32,
    scale: f32, // gamma * inv_std
    beta: f32,
    relu: bool,
}

fn bwd_channel(c: u32) -> BwdChannel {
    let inv_std = bw_inv_std[p.inv_std_off + c];
    return BwdChannel(bw_mean[p.mean_off + c], inv_std, bw_gamma[p.gamma_off + c] * inv_std,
                      bw_beta[p.beta_off + c], p.relu != 0u);
}

// Lane 0 accumulates the parameter gradients; returns (sum g, sum g*xhat) / n.
fn bwd_params(li: u32, c: u32, sums: vec2<f32>) -> vec2<f32> {
    if (li == 0u) {
        bw_d_beta[p.d_beta_off + c] += sums.x;
        bw_d_gamma[p.d_gamma_off + c] += sums.y;
    }
    return sums / p.count;
}

// d_x += gamma * inv_std * (g - m.x - xhat * m.y) over channel c, with m = (sum g,
// sum g*xhat) / n.
fn write_d_x_v1(li: u32, c: u32, k: BwdChannel, m: vec2<f32>) {
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let xc = bw_x[at(p.x, c, w)] - k.mean;
        let xhat = xc * k.inv_std;
        // Same expression as the forward's y, so the recomputed ReLU mask matches it.
        let keep = !k.relu || xc * k.scale + k.beta > 0.0;
        let g = select(0.0, bw_d_y[at(p.y, c, w)], keep);
        let a = at(p.d_x, c, w);
        bw_d_x[a] += k.scale * (g - m.x - xhat * m.y);
        w = walk_next(w);
    }
}

@compute @workgroup_size(WG)
fn backward_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let k = bwd_channel(c);
    let m = bwd_params(li, c, reduce_sum(li, bwd_lane_sums_v1(li, c, k)));
    write_d_x_v1(li, c, k, m);
}

// d_x += gamma * inv_std * (g - m.x - xhat * m.y) over channel c, with m = (sum g,
// sum g*xhat) / n.
fn write_d_x_v4(li: u32, c: u32, k: BwdChannel, m: vec2<f32>) {
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let xc = bw4_x[at(p.x, c, w)] - k.mean;
        let xhat = xc * k.inv_std;
        // Same expression as the forward's y, so the recomputed ReLU mask matches it.
        let keep = vec4(!k.relu) | (xc * k.scale + k.beta > vec4(0.0));
        let g = select(vec4(0.0), bw4_d_y[at(p.y, c, w)], keep);
        let a = at(p.d_x, c, w);
        bw4_d_x[a] += k.scale * (g - m.x - xhat * m.y);
        w = walk_next(w);
    }
}

@compute @workgroup_size(WG)
fn backward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let k = bwd_channel(c);
    let m = bwd_params(li, c, reduce_sum(li, bwd_lane_sums_v4(li, c, k)));
    write_d_x_v4(li, c, k, m);
}

// This lane's (sum g, sum g*xhat) over its values of channel c.
fn bwd_lane_sums_v1(li: u32, c: u32, k: BwdChannel) -> vec2<f32> {
    var acc = vec2(0.0);
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let xc = bw_x[at(p.x, c, w)] - k.mean;
        let xhat = xc * k.inv_std;
        let keep = !k.relu || xc * k.scale + k.beta > 0.0;
        let g = select(0.0, bw_d_y[at(p.y, c, w)], keep);
        acc += vec2(g, g * xhat);
        w = walk_next(w);
    }
    return acc;
}

fn bwd_lane_sums_v4(li: u32, c: u32, k: BwdChannel) -> vec2<f32> {
    var sg = vec4(0.0);
    var sgx = vec4(0.0);
    var w = walk_start(li);
    for (var j = li; j < p.units; j += WG) {
        let xc = bw4_x[at(p.x, c, w)] - k.mean;
        let xhat = xc * k.inv_std;
        let keep = vec4(!k.relu) | (xc * k.scale + k.beta > vec4(0.0));
        let g = select(vec4(0.0), bw4_d_y[at(p.y, c, w)], keep);
        sg += g;
        sgx += g * xhat;
        w = walk_next(w);
    }
    return vec2(hsum(sg), hsum(sgx));
}

// Synchronised backward, part 1: accumulates this rank's d_gamma and d_beta and writes its
// sums for the host to add up over the ranks.
fn store_bwd_sums(li: u32, c: u32, lane: vec2<f32>) {
    let sums = reduce_sum(li, lane);
    if (li == 0u) {
        bw_d_beta[p.d_beta_off + c] += sums.x;
        bw_d_gamma[p.d_gamma_off + c] += sums.y;
        bw_sums_out[c] = sums.x;
        bw_sums_out[p.channels + c] = sums.y;
    }
}

@compute @workgroup_size(WG)
fn backward_sums_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    store_bwd_sums(li, c, bwd_lane_sums_v1(li, c, bwd_channel(c)));
}

@compute @workgroup_size(WG)
fn backward_sums_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    store_bwd_sums(li, c, bwd_lane_sums_v4(li, c, bwd_channel(c)));
}

// Synchronised backward, part 2: d_x from the sums over all ranks (p.count is the global n).
@compute @workgroup_size(WG)
fn backward_apply_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let m = vec2(bw_sums_in[c], bw_sums_in[p.channels + c]) / p.count;
    write_d_x_v1(li, c, bwd_channel(c), m);
}

@compute @workgroup_size(WG)
fn backward_apply_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let c = channel_id(wg, nwg);
    if (c >= p.channels) { return; }
    let m = vec2(bw_sums_in[c], bw_sums_in[p.channels + c]) / p.count;
    write_d_x_v4(li, c, bwd_channel(c), m);
}

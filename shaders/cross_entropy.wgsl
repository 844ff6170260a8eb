// Softmax cross-entropy with mean reduction over the batch.
//   forward:  probs[n, k] = exp(x[n, k] - max_n) / sum_j exp(x[n, j] - max_n)
//             loss        = (1 / N) sum_n -(x[n, t_n] - max_n - log(sum_j exp(x[n, j] - max_n)))
//   backward: d_x[n, k]  += s * probs[n, k] - s * [k == t_n],   s = d_loss / N (host f32)
// x = logits (N, K), t_n = labels[n] (a class index stored as f32). A label that is not an
// integer in [0, K) gives a NaN loss and NaN gradients for its row (never a wrong number).
//
// forward: ONE workgroup of WG invocations; invocation i handles rows i, i + WG, ... (three
// passes over a row: max, sum of exponentials, probs), adds its row losses in order, and
// invocation 0 adds the WG partial sums in order: a fixed summation order, so the loss is
// bit-reproducible. (N * K is a classifier head's size: a batch times the class count.)
// backward: one invocation per element of d_x.

override WG: u32 = 64;

struct Params {
    n: u32,        // rows (batch)
    k: u32,        // classes
    logits_off: u32,
    probs_off: u32,
    labels_off: u32,
    out_off: u32,  // loss (forward) or d_logits (backward) offset
    scale: f32,    // backward: d_loss / N
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// The class index stored in `v`, or K (invalid) when `v` is not an integer in [0, K).
fn class_of(v: f32) -> u32 {
    if (!(v >= 0.0) || v >= f32(p.k) || floor(v) != v) { return p.k; }
    return u32(v);
}

// forward bindings
@group(0) @binding(1) var<storage, read> fwd_logits: array<f32>;     // (N, K) at logits_off
@group(0) @binding(2) var<storage, read> fwd_labels: array<f32>;     // (N) at labels_off
@group(0) @binding(3) var<storage, read_write> fwd_probs: array<f32>; // (N, K) at probs_off
@group(0) @binding(4) var<storage, read_write> fwd_loss: array<f32>;  // (1) at out_off

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn forward(@builtin(local_invocation_index) li: u32) {
    var total = 0.0;
    for (var r = li; r < p.n; r += WG) {
        let row = p.logits_off + r * p.k;
        var mx = fwd_logits[row];
        for (var j = 1u; j < p.k; j++) { mx = max(mx, fwd_logits[row + j]); }
        var sum = 0.0;
        for (var j = 0u; j < p.k; j++) { sum += exp(fwd_logits[row + j] - mx); }
        let inv = 1.0 / sum;
        let out = p.probs_off + r * p.k;
        for (var j = 0u; j < p.k; j++) { fwd_probs[out + j] = exp(fwd_logits[row + j] - mx) * inv; }
        let t = class_of(fwd_labels[p.labels_off + r]);
        var row_loss = nan();
        if (t < p.k) { row_loss = -(fwd_logits[row + t] - mx - log(sum)); }
        total += row_loss;
    }
    partial[li] = total;
    workgroupBarrier();
    if (li == 0u) {
        var s = 0.0;
        for (var i = 0u; i < WG; i++) { s += partial[i]; }
        fwd_loss[p.out_off] = s / f32(p.n);
    }
}

// backward bindings
@group(0) @binding(1) var<storage, read> bwd_probs: array<f32>;        // (N, K) at probs_off
@group(0) @binding(2) var<storage, read> bwd_labels: array<f32>;       // (N) at labels_off
@group(0) @binding(3) var<storage, read_write> bwd_d_logits: array<f32>; // (N, K) at out_off

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.n * p.k) { return; }
    let r = e / p.k;
    let j = e - r * p.k;
    let t = class_of(bwd_labels[p.labels_off + r]);
    var g = p.scale * bwd_probs[p.probs_off + e];
    if (t >= p.k) {
        g = nan();
    } else if (t == j) {
        g -= p.scale;
    }
    bwd_d_logits[p.out_off + e] += g;
}

// Non-finite count: flags[p.slot] = number of elements of x[p.x_off .. p.x_off + p.numel]
// that are NaN or +-infinity (exponent bits all ones; tested on the bits, since WGSL lets
// compilers assume float comparisons never see NaN).
// One workgroup per tensor: lanes stride over the elements, then a fixed-order tree in
// workgroup memory sums the lanes' counts (deterministic, no atomics).

override WG: u32 = 256; // a power of two

struct Params {
    x_off: u32,
    numel: u32,
    slot: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // (numel) at p.x_off
@group(0) @binding(2) var<storage, read_write> flags: array<f32>; // (tensors checked)

var<workgroup> counts: array<u32, WG>;

@compute @workgroup_size(WG)
fn count_nonfinite(@builtin(local_invocation_index) li: u32) {
    var n = 0u;
    for (var i = li; i < p.numel; i += WG) {
        let bits = bitcast<u32>(x[p.x_off + i]);
        n += select(0u, 1u, (bits & 0x7f800000u) == 0x7f800000u);
    }
    counts[li] = n;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (li < s) {
            counts[li] += counts[li + s];
        }
    }
    if (li == 0u) {
        flags[p.slot] = f32(counts[0]);
    }
}

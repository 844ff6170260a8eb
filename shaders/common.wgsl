// Helpers prepended to every shader in this folder (see src/ops/mod.rs).

// A strided view of a tensor inside a larger buffer: element (n, i), with i the flat
// index inside one batch item of `item` elements, lives at offset + n * batch_stride + i.
// A channel slice [c0, c0 + C) of an NCHW buffer is a view with offset c0 * H * W.
struct View {
    offset: u32,
    batch_stride: u32,
    item: u32,
    _pad: u32,
}

// Buffer index of the flat element `flat` (row-major over the view's shape). A dense view
// (batch_stride == item) needs no division: on a CPU adapter a per-lane integer division is
// a scalar divide per lane, which cost ReLU a quarter of its time on lavapipe.
fn view_index(v: View, flat: u32) -> u32 {
    if (v.batch_stride == v.item) { return v.offset + flat; }
    let n = flat / v.item;
    return v.offset + n * v.batch_stride + (flat - n * v.item);
}

// Linear invocation index for a grid folded as (x, y) workgroups (see Gpu::grid_1d).
fn linear_id(wg: vec3<u32>, num_wg: vec3<u32>, local: u32, wg_size: u32) -> u32 {
    return (wg.x + wg.y * num_wg.x) * wg_size + local;
}

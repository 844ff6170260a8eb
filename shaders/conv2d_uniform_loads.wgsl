// conv2d helpers whose loads are the same for every lane of a workgroup, in their plain
// form (one load per value); conv2d_subgroup.wgsl defines the same functions with
// subgroup operations. Appended to conv2d.wgsl in the plain module.

// backward_weight_rows: d_y of channels co0 .. co0 + 15 (clamped) at the pixel group at
// vec4 index yb + channel * hw4; `sl` is unused here.
fn bq_dy16(yb: u32, co0: u32, hw4: u32, sl: u32) -> Dy16 {
    var g: Dy16;
    for (var cb = 0u; cb < 4u; cb++) {
        if (4u * cb < CH_TILE) {
            let c = min(vec4(co0 + 4u * cb) + vec4(0u, 1u, 2u, 3u), vec4(p.cout - 1u)) * hw4;
            g[cb] = mat4x4<f32>(bq_d_y[yb + c.x], bq_d_y[yb + c.y], bq_d_y[yb + c.z], bq_d_y[yb + c.w]);
        }
    }
    return g;
}

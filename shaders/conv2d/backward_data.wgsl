// conv2d backward_data outside the vec4 layout (gather form); formulas and DataParams in
// common.wgsl.

// ---------------------------------------------------------------------------------------
// backward_data bindings
@group(0) @binding(1) var<storage, read> bd_d_y: array<f32>;       // (N, Cout, OH, OW) via p.inp
@group(0) @binding(2) var<storage, read> bd_w: array<f32>;         // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read_write> bd_d_x: array<f32>; // (N, Cin, H, W) via p.out

@compute @workgroup_size(WG)
fn backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let hw = p.h * p.w;
    let npix = p.n * hw;
    let ohw = p.oh * p.ow;
    let kk = p.kh * p.kw;
    let wrow = p.cin * kk;
    let ci0 = tile_id(wg) * CH_TILE;
    let q0 = block_id(wg, nwg) * (WG * PX_TILE) + li;
    let s = i32(p.stride);

    var th0: array<i32, MAX_PX>;  // ih + pad
    var tw0: array<i32, MAX_PX>;  // iw + pad
    var yb: array<u32, MAX_PX>;   // index of d_y[n, 0, 0, 0]
    for (var j = 0u; j < PX_TILE; j++) {
        let q = min(q0 + j * WG, npix - 1u);
        let n = q / hw;
        let r = q - n * hw;
        let ih = r / p.w;
        let iw = r - ih * p.w;
        th0[j] = i32(ih + p.pad);
        tw0[j] = i32(iw + p.pad);
        yb[j] = p.inp.offset + n * p.inp.batch_stride;
    }
    // Weight offset of each input channel (clamped for the remainder tile).
    var wb: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        wb[i] = p.w_off + min(ci0 + i, p.cin - 1u) * kk;
    }

    var acc: array<f32, 128>;
    for (var t = 0u; t < CH_TILE * PX_TILE; t++) {
        acc[t] = 0.0;
    }

    for (var kh = 0u; kh < p.kh; kh++) {
        for (var kw = 0u; kw < p.kw; kw++) {
            var ok: array<bool, MAX_PX>;
            var yi: array<u32, MAX_PX>;   // index of d_y[n, 0, oh, ow] (or a safe one)
            for (var j = 0u; j < PX_TILE; j++) {
                let th = th0[j] - i32(kh);
                let tw = tw0[j] - i32(kw);
                let oh = th / s;
                let ow = tw / s;
                ok[j] = th >= 0 && tw >= 0 && oh * s == th && ow * s == tw
                    && oh < i32(p.oh) && ow < i32(p.ow);
                yi[j] = select(yb[j], yb[j] + u32(oh) * p.ow + u32(ow), ok[j]);
            }
            let kof = kh * p.kw + kw;
            for (var co = 0u; co < p.cout; co++) {
                var gv: array<f32, MAX_PX>;
                for (var j = 0u; j < PX_TILE; j++) {
                    gv[j] = select(0.0, bd_d_y[yi[j] + co * ohw], ok[j]);
                }
                let wo = co * wrow + kof;
                for (var i = 0u; i < CH_TILE; i++) {
                    let wv = bd_w[wb[i] + wo];
                    for (var j = 0u; j < PX_TILE; j++) {
                        acc[i * PX_TILE + j] = fma(wv, gv[j], acc[i * PX_TILE + j]);
                    }
                }
            }
        }
    }

    for (var j = 0u; j < PX_TILE; j++) {
        let q = q0 + j * WG;
        if (q >= npix) { continue; }
        let n = q / hw;
        let r = q - n * hw;
        let xb = p.out.offset + n * p.out.batch_stride + r;
        for (var i = 0u; i < CH_TILE; i++) {
            let ci = ci0 + i;
            if (ci >= p.cin) { continue; }
            bd_d_x[xb + ci * hw] += acc[i * PX_TILE + j];
        }
    }
}

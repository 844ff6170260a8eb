//! Winograd F(2x2, 3x3) (`shaders/conv2d/winograd.wgsl`): the input and weight
//! transforms, their 16 products on the tiled `conv1x1`, and the output transform.

use super::tiled::{blocked, Blocked, DataParams};
use super::{prologue_bindings, ConvDims, ConvHead, DataPass};
use crate::gpu::{to_u32, Arg, Encoder, Gpu, Kernel, Launch, Result, Tensor};
use crate::ops::conv2d::shaders::WINOGRAD_SHADER;
use crate::ops::conv2d::{Conv2dSpec, ConvKernel, Geom};
use crate::ops::{groups, ViewParams};

/// Workgroup size of the Winograd transforms.
const WINOGRAD_WG: u32 = 64;
/// Floats of each of Winograd's three scratch tensors at most (4 MiB: the transformed
/// weights of a block of output channels, the transformed input of a chunk of images, their
/// products): Winograd runs block by block and chunk by chunk through the same three
/// tensors, so that its scratch stays small next to the activations (a pass's buffers are
/// held until its submission ends; ResNet-18's 512 -> 512 layers would otherwise hold
/// 16 MiB of transformed weights each).
const WINOGRAD_SCRATCH_FLOATS: usize = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WinogradParams {
    inp: ViewParams,
    out: ViewParams,
    n0: u32,
    h: u32,
    w: u32,
    out_c: u32,
    red_c: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles: u32,
    t_pad: u32,
    accumulate: u32,
    has_bias: u32,
    b_off: u32,
    sc_off: u32,
    sh_off: u32,
    w_off: u32,
    w_out_stride: u32,
    w_red_stride: u32,
    flip: u32,
    total: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<WinogradParams>() == 112);

/// The three scratch tensors, sized for the first (largest) chunk of images and block of
/// output channels; every chunk and block reuses them.
struct Scratch {
    /// The transformed input V: `[16, red_c, 1, t_pad]`.
    input: Tensor,
    /// The transformed weight U of one block: `[16 * red_c, block]`.
    weight: Tensor,
    /// The products M = U V of one block: `[16, block, 1, t_pad]`.
    products: Tensor,
}

/// Winograd F(2x2, 3x3) for a forward (overwrites y) or backward-data pass (adds into
/// d_x): per chunk of images the input transform, then per block of output channels the
/// weight transform, the 16 products on `conv1x1` and the output transform (see
/// winograd.wgsl).
pub(super) fn data_pass(enc: &mut Encoder, pass: &DataPass) -> Result<()> {
    let DataPass {
        op, g, p, packing, ..
    } = *pass;
    let (out_c, red_c) = (packing.out_c, packing.red_c);
    let (tiles_h, tiles_w) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let per_image = tiles_h * tiles_w;
    if out_c == 0 || g.n * per_image == 0 {
        return Ok(());
    }
    // Output channels per block (a multiple of 4), and images per chunk.
    let block = (WINOGRAD_SCRATCH_FLOATS / (16 * red_c.max(1)) / 4 * 4)
        .max(4)
        .min(out_c.next_multiple_of(4));
    let images = (WINOGRAD_SCRATCH_FLOATS / (16 * red_c.max(block) * per_image)).clamp(1, g.n);
    let mut q = WinogradParams {
        inp: ViewParams::of(pass.read),
        h: g.h as u32,
        w: g.w as u32,
        red_c: red_c as u32,
        tiles_h: tiles_h as u32,
        tiles_w: tiles_w as u32,
        accumulate: p.accumulate,
        has_bias: p.has_bias,
        sc_off: p.sc_off,
        sh_off: p.sh_off,
        w_out_stride: to_u32(op, "weight stride", packing.out_stride)?,
        w_red_stride: to_u32(op, "weight stride", packing.red_stride)?,
        flip: packing.flip as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    let (_, t_pad_max) = padding(images.min(g.n) * per_image);
    to_u32(op, "Winograd scratch", 16 * red_c.max(block) * t_pad_max)?;
    let gpu = enc.gpu();
    let scratch = Scratch {
        input: gpu.zeros(&[16, red_c.max(1), 1, t_pad_max], "conv2d Winograd input")?,
        weight: gpu.zeros(&[16 * red_c.max(1), block], "conv2d Winograd weight")?,
        products: gpu.zeros(&[16, block, 1, t_pad_max], "conv2d Winograd products")?,
    };
    for n0 in (0..g.n).step_by(images) {
        let tiles = images.min(g.n - n0) * per_image;
        let (lanes, t_pad) = padding(tiles);
        q.n0 = n0 as u32;
        q.tiles = tiles as u32;
        q.t_pad = t_pad as u32;
        if red_c > 0 {
            input_transform(enc, pass, &mut q, &scratch)?;
        }
        for o0 in (0..out_c).step_by(block) {
            let oc = block.min(out_c - o0);
            output_block(enc, pass, &mut q, &scratch, (o0, oc), lanes)?;
        }
    }
    Ok(())
}

/// The products run as one conv1x1 over 16 images (one per e) of 1 x t_pad pixels, image e
/// with weight U[e]: its workgroups (lanes x 2 groups of 4 pixels) must not straddle two
/// images, so t_pad is a multiple of 8 * lanes. Returns (lanes, t_pad) for `tiles` tiles.
fn padding(tiles: usize) -> (u32, usize) {
    let lanes: u32 = [64, 32, 16, 8]
        .into_iter()
        .find(|&l| tiles.next_multiple_of(8 * l as usize) - tiles <= tiles / 8)
        .unwrap_or(8);
    (lanes, tiles.next_multiple_of(8 * lanes as usize))
}

/// A view of 16 images of `channels` x t_pad at the start of a scratch tensor.
fn images16(channels: usize, t_pad: usize) -> ViewParams {
    ViewParams {
        offset: 0,
        batch_stride: (channels * t_pad) as u32,
        item: (channels * t_pad) as u32,
        _pad: 0,
    }
}

/// V = Bᵀ d B for every input channel and tile of the chunk `q` describes (through the
/// batch-norm + ReLU prologue when the pass has one).
fn input_transform(
    enc: &mut Encoder,
    pass: &DataPass,
    q: &mut WinogradParams,
    scratch: &Scratch,
) -> Result<()> {
    let (read, red_c, tiles) = (pass.read, pass.packing.red_c, q.tiles as usize);
    q.total = (red_c * tiles) as u32;
    let (scale, shift) = prologue_bindings(pass.prologue, read);
    let prologue_flag = if pass.prologue.is_some() { 1.0 } else { 0.0 };
    enc.launch(Launch {
        shader: &WINOGRAD_SHADER,
        entry: "winograd_input",
        overrides: &[("WG", WINOGRAD_WG as f64), ("PROLOGUE", prologue_flag)],
        args: &Arg::bindings(&*q, &[read, scale, shift], &[&scratch.input]),
        workgroups: Gpu::grid_1d(groups(red_c * tiles, WINOGRAD_WG)),
    })
}

/// Output channels `o0 .. o0 + oc` of the chunk `q` describes: U = G g Gᵀ, M = U V on
/// `conv1x1` with `lanes` lanes, and y (+)= Aᵀ M A (+ bias).
fn output_block(
    enc: &mut Encoder,
    pass: &DataPass,
    q: &mut WinogradParams,
    scratch: &Scratch,
    (o0, oc): (usize, usize),
    lanes: u32,
) -> Result<()> {
    let DataPass {
        op,
        g,
        p,
        packing,
        weight,
        written,
        bias,
        ..
    } = *pass;
    let (red_c, tiles, t_pad) = (packing.red_c, q.tiles as usize, q.t_pad as usize);
    let ocp = oc.next_multiple_of(4);
    let written_view = ViewParams::of(written);
    q.out_c = oc as u32;
    q.w_off = to_u32(
        op,
        "weight offset",
        packing.w_off as usize + o0 * packing.out_stride,
    )?;
    q.b_off = p.b_off + o0 as u32;
    q.out = ViewParams {
        offset: to_u32(
            op,
            "output offset",
            written_view.offset as usize + o0 * g.h * g.w,
        )?,
        ..written_view
    };
    if red_c > 0 {
        q.total = (red_c * ocp) as u32;
        let kernel = Kernel::new(&WINOGRAD_SHADER, "winograd_weight", WINOGRAD_WG);
        enc.launch_threads(kernel, &*q, &[weight], &[&scratch.weight], red_c * ocp)?;
    }
    let product = Geom {
        n: 16,
        cin: red_c,
        h: 1,
        w: t_pad,
        cout: oc,
        oh: 1,
        ow: t_pad,
        kh: 1,
        kw: 1,
    };
    let unit = Conv2dSpec {
        stride: 1,
        padding: 0,
    };
    let products = DataParams {
        head: ConvHead {
            inp: images16(red_c, t_pad),
            out: images16(oc, t_pad),
            dims: ConvDims::of(&product, unit),
        },
        out_c: oc as u32,
        red_c: red_c as u32,
        w_image_stride: (red_c * ocp) as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    let launch = Blocked {
        kernel: ConvKernel::Conv1x1,
        g: &product,
        p: &products,
        packed: &scratch.weight,
        read: &scratch.input,
        written: &scratch.products,
        bias: None,
        prologue: None,
        lanes: Some(lanes),
    };
    blocked(enc, op, launch)?;
    q.total = (oc * tiles) as u32;
    let (shader, entry) = ConvKernel::Winograd.entry(false);
    let kernel = Kernel::new(shader, entry, WINOGRAD_WG);
    let reads = [&scratch.products, bias.unwrap_or(&scratch.products)];
    enc.launch_threads(kernel, &*q, &reads, &[written], oc * tiles)
}

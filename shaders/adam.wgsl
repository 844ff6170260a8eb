// One Adam / AdamW update of one parameter tensor, in PyTorch's f32 operation order
// (torch.optim.Adam, single-tensor path). Scalars come from the host, computed in f64 and
// rounded to f32 the way PyTorch rounds its Python-float scalars:
//   Adam  (decoupled = 0): if wd != 0: g = grad + wd * p
//   AdamW (decoupled = 1): if wd != 0: p = p * (1 - lr * wd);   g = grad
//   m = lerp(m, g, w)  with w = 1 - beta1:  m + w * (g - m)  if |w| < 0.5, else g - (g - m) * (1 - w)
//   v = v * beta2 + ((1 - beta2) * g) * g
//   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//   p = p + ((-lr / (1 - beta1^t)) * m) / denom
// One invocation per element (`step`) or per 4 elements (`step_v4`, all offsets and numel
// multiples of 4). Every tensor is a contiguous run at its offset.

override WG: u32 = 256;

const FLAG_DECOUPLED: u32 = 1u;
const FLAG_SMALL_WEIGHT: u32 = 2u; // |1 - beta1| < 0.5: lerp's first form
const FLAG_WEIGHT_DECAY: u32 = 4u; // wd != 0

struct Params {
    numel: u32,          // elements (step) or vec4s (step_v4)
    flags: u32,
    param_off: u32,      // offsets in elements (step) or vec4s (step_v4)
    m_off: u32,
    v_off: u32,
    grad_off: u32,
    lerp_w: f32,         // 1 - beta1
    lerp_one_minus_w: f32, // 1 - lerp_w, in f32
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,          // 1 - lr * wd (AdamW)
    neg_step_size: f32,  // -lr / (1 - beta1^t)
    bc2_sqrt: f32,       // sqrt(1 - beta2^t)
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

struct State {
    param: f32,
    m: f32,
    v: f32,
}

fn update(s: State, grad: f32) -> State {
    var param = s.param;
    var g = grad;
    if ((p.flags & FLAG_WEIGHT_DECAY) != 0u) {
        if ((p.flags & FLAG_DECOUPLED) != 0u) {
            param = param * p.decay;
        } else {
            g = g + p.weight_decay * param;
        }
    }
    var m: f32;
    if ((p.flags & FLAG_SMALL_WEIGHT) != 0u) {
        m = s.m + p.lerp_w * (g - s.m);
    } else {
        m = g - (g - s.m) * p.lerp_one_minus_w;
    }
    let v = s.v * p.beta2 + (p.one_minus_beta2 * g) * g;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    param = param + (p.neg_step_size * m) / denom;
    return State(param, m, v);
}

// step bindings
@group(0) @binding(1) var<storage, read> st_grad: array<f32>;        // (numel) at grad_off
@group(0) @binding(2) var<storage, read_write> st_param: array<f32>; // (numel) at param_off
@group(0) @binding(3) var<storage, read_write> st_m: array<f32>;     // (numel) at m_off
@group(0) @binding(4) var<storage, read_write> st_v: array<f32>;     // (numel) at v_off

@compute @workgroup_size(WG)
fn step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let s = update(State(st_param[p.param_off + i], st_m[p.m_off + i], st_v[p.v_off + i]),
                   st_grad[p.grad_off + i]);
    st_param[p.param_off + i] = s.param;
    st_m[p.m_off + i] = s.m;
    st_v[p.v_off + i] = s.v;
}

// step_v4 bindings: the same tensors read as vec4
@group(0) @binding(1) var<storage, read> s4_grad: array<vec4<f32>>;        // (numel / 4) at grad_off
@group(0) @binding(2) var<storage, read_write> s4_param: array<vec4<f32>>; // (numel / 4) at param_off
@group(0) @binding(3) var<storage, read_write> s4_m: array<vec4<f32>>;     // (numel / 4) at m_off
@group(0) @binding(4) var<storage, read_write> s4_v: array<vec4<f32>>;     // (numel / 4) at v_off

@compute @workgroup_size(WG)
fn step_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let pv = s4_param[p.param_off + i];
    let mv = s4_m[p.m_off + i];
    let vv = s4_v[p.v_off + i];
    let gv = s4_grad[p.grad_off + i];
    var po: vec4<f32>;
    var mo: vec4<f32>;
    var vo: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
        let s = update(State(pv[c], mv[c], vv[c]), gv[c]);
        po[c] = s.param;
        mo[c] = s.m;
        vo[c] = s.v;
    }
    s4_param[p.param_off + i] = po;
    s4_m[p.m_off + i] = mo;
    s4_v[p.v_off + i] = vo;
}

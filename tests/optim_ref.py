#!/usr/bin/python3
"""PyTorch reference trajectories for tests/test_optim.cpp.

    /usr/bin/python3 tests/optim_ref.py > tests/optim_ref_data.inc

Two parameter tensors (5 and 7 floats) with fixed initial values take 6
steps of fixed gradients (a sin/cos formula, written out as float32) under
every optimizer configuration in CASES, through torch.optim's single-tensor
code paths (foreach=False), in float32. The output is a C++ include holding
the initial parameters, the gradients, the parameters after every step, the
gradient norms clip_grad_norm_ reported, the learning rates of torch's
StepLR / ExponentialLR / CosineAnnealingLR per epoch, and gradients clipped
by torch.nn.utils.clip_grad_norm_.

Every hyperparameter is rounded to float32 before torch sees it, so torch
(which takes Python floats) and nn (which stores floats) start from the same
numbers.
"""
import math
import struct
import sys

import torch

STEPS = 6
N0, N1 = 5, 7
EPOCHS = 6


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def lit(x):
    """A float as a C++ float literal that reads back to the same float32."""
    x = f32(x)
    if math.isnan(x) or math.isinf(x):
        raise ValueError(x)
    s = "%.9g" % x
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


def dlit(x):
    return "%.17g" % x


def init_params():
    p0 = [0.5 * math.cos(0.9 * i + 0.1) for i in range(N0)]
    p1 = [-0.3 + 0.2 * i for i in range(N1)]
    return (torch.tensor(p0, dtype=torch.float32), torch.tensor(p1, dtype=torch.float32))


def grads(step):
    g0 = [0.8 * math.sin(1.3 * i + 0.7 * step + 0.2) for i in range(N0)]
    g0[2] = 0.0  # an element that never gets a gradient
    g0[4] *= 1e-3  # a tiny gradient: eps matters
    g1 = [2.5 * math.cos(0.6 * i - 0.9 * step) + 0.1 * step for i in range(N1)]
    return (torch.tensor(g0, dtype=torch.float32), torch.tensor(g1, dtype=torch.float32))


# name, torch optimizer, torch kwargs, C++ config expression, extras
# extras: clip (clip_grad_norm_ max_norm before every step),
#         sched (scheduler factory, stepped after every step; C++ calls end_epoch()).
def sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
    kw = dict(lr=f32(lr), momentum=f32(momentum), nesterov=nesterov,
              weight_decay=f32(weight_decay), dampening=f32(dampening), foreach=False)
    cpp = "nn::SGD(%s, %s, %s, %s, %s)" % (lit(lr), lit(momentum), "true" if nesterov else "false",
                                          lit(weight_decay), lit(dampening))
    return torch.optim.SGD, kw, cpp


def adagrad(lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
            default=False):
    kw = dict(lr=f32(lr), lr_decay=f32(lr_decay), weight_decay=f32(weight_decay),
              initial_accumulator_value=f32(initial_accumulator_value), eps=f32(eps),
              foreach=False)
    cpp = "nn::Adagrad()" if default else "nn::Adagrad(%s, %s, %s, %s, %s)" % (
        lit(lr), lit(lr_decay), lit(weight_decay), lit(initial_accumulator_value), lit(eps))
    return torch.optim.Adagrad, kw, cpp


def rmsprop(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
            default=False):
    kw = dict(lr=f32(lr), alpha=f32(alpha), eps=f32(eps), weight_decay=f32(weight_decay),
              momentum=f32(momentum), centered=centered, foreach=False)
    cpp = "nn::RMSprop()" if default else "nn::RMSprop(%s, %s, %s, %s, %s, %s)" % (
        lit(lr), lit(alpha), lit(eps), lit(weight_decay), lit(momentum),
        "true" if centered else "false")
    return torch.optim.RMSprop, kw, cpp


def adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=None, amsgrad=False,
         decoupled=False, default=False):
    if weight_decay is None:  # torch's defaults: Adam 0, AdamW 1e-2
        weight_decay = 1e-2 if decoupled else 0.0
    kw = dict(lr=f32(lr), betas=(f32(beta1), f32(beta2)), eps=f32(eps),
              weight_decay=f32(weight_decay), amsgrad=amsgrad, foreach=False)
    name = "AdamW" if decoupled else "Adam"
    cpp = ("nn::%s()" % name) if default else "nn::%s(%s, %s, %s, %s, %s, %s)" % (
        name, lit(lr), lit(beta1), lit(beta2), lit(eps), lit(weight_decay),
        "true" if amsgrad else "false")
    return (torch.optim.AdamW if decoupled else torch.optim.Adam), kw, cpp


CASES = [
    ("sgd_plain", sgd(0.1), {}),
    ("sgd_momentum", sgd(0.1, momentum=0.9), {}),
    ("sgd_momentum_dampening", sgd(0.1, momentum=0.9, dampening=0.1), {}),
    ("sgd_nesterov_wd", sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), {}),
    ("adagrad_default", adagrad(default=True), {}),
    ("adagrad_decay_init_wd", adagrad(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1,
                                      weight_decay=0.01), {}),
    ("rmsprop_default", rmsprop(default=True), {}),
    ("rmsprop_centered_momentum_wd", rmsprop(centered=True, momentum=0.5, weight_decay=0.01), {}),
    ("adam_default", adam(default=True), {}),
    ("adam_lr0.1", adam(lr=0.1), {}),
    ("adam_amsgrad_wd", adam(lr=0.1, amsgrad=True, weight_decay=0.01), {}),
    ("adamw_lr0.1", adam(lr=0.1, weight_decay=0.01, decoupled=True), {}),
    ("adamw_default", adam(decoupled=True, default=True), {}),
    ("adamw_amsgrad", adam(lr=0.1, weight_decay=0.01, amsgrad=True, decoupled=True), {}),
    # Clipping before every step (global norm over both tensors), then the update.
    ("sgd_momentum_clip1", sgd(0.1, momentum=0.9), {"clip": 1.0}),
    ("adam_lr0.1_clip0.5", adam(lr=0.1), {"clip": 0.5}),
    # A schedule stepped after every optimizer step.
    ("adam_lr0.1_exponential0.8", adam(lr=0.1),
     {"sched": ("Exponential", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=f32(0.8)),
                "c.schedule = nn::Schedule::Exponential; c.gamma = %s;" % lit(0.8))}),
    ("sgd_momentum_step2", sgd(0.1, momentum=0.9),
     {"sched": ("Step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=f32(0.5)),
                "c.schedule = nn::Schedule::Step; c.step_size = 2; c.gamma = %s;" % lit(0.5))}),
]


def run_case(opt_cls, kw, extras):
    p0, p1 = init_params()
    p0.requires_grad_(True)
    p1.requires_grad_(True)
    opt = opt_cls([p0, p1], **kw)
    sched = extras["sched"][1](opt) if "sched" in extras else None
    after0, after1, norms = [], [], []
    for s in range(STEPS):
        g0, g1 = grads(s)
        p0.grad = g0.clone()
        p1.grad = g1.clone()
        if "clip" in extras:
            total = torch.nn.utils.clip_grad_norm_([p0, p1], f32(extras["clip"]))
            norms.append(float(total))
        else:
            norms.append(0.0)
        opt.step()
        if sched is not None:
            sched.step()
        after0.append(p0.detach().clone().tolist())
        after1.append(p1.detach().clone().tolist())
    return after0, after1, norms


def schedule_lrs(make):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=f32(0.1))
    sched = make(opt)
    lrs = []
    for _ in range(EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return lrs


def arr(values):
    return "{" + ", ".join(lit(v) for v in values) + "}"


def main():
    out = sys.stdout
    w = out.write
    w("// Produced by: /usr/bin/python3 tests/optim_ref.py > tests/optim_ref_data.inc\n")
    w("// torch %s, torch.optim single-tensor paths (foreach=False), float32.\n" % torch.__version__)
    w("// Generated; do not edit. Included by tests/test_optim.cpp.\n")
    w("namespace optim_ref {\n\n")
    w("constexpr int kSteps = %d, kN0 = %d, kN1 = %d, kEpochs = %d;\n\n" % (STEPS, N0, N1, EPOCHS))
    p0, p1 = init_params()
    w("static const float kInit0[kN0] = %s;\n" % arr(p0.tolist()))
    w("static const float kInit1[kN1] = %s;\n\n" % arr(p1.tolist()))
    w("// Gradients of step s (the same every case).\n")
    w("static const float kGrad0[kSteps][kN0] = {\n")
    for s in range(STEPS):
        w("    %s,\n" % arr(grads(s)[0].tolist()))
    w("};\n")
    w("static const float kGrad1[kSteps][kN1] = {\n")
    for s in range(STEPS):
        w("    %s,\n" % arr(grads(s)[1].tolist()))
    w("};\n\n")

    w("struct Case {\n")
    w("    const char* name;\n")
    w("    nn::OptimConfig cfg;\n")
    w("    bool epoch_per_step;           // end_epoch() after every step (scheduler.step())\n")
    w("    float after0[kSteps][kN0];     // parameters after step s\n")
    w("    float after1[kSteps][kN1];\n")
    w("    float grad_norm[kSteps];       // clip_grad_norm_'s total (0: no clipping)\n")
    w("};\n\n")
    for name, (opt_cls, kw, cpp), extras in CASES:
        fn = "cfg_" + name.replace(".", "_")
        w("inline nn::OptimConfig %s() {\n" % fn)
        w("    nn::OptimConfig c = %s;\n" % cpp)
        if "clip" in extras:
            w("    c.clip_norm = %s;\n" % lit(extras["clip"]))
        if "sched" in extras:
            w("    %s\n" % extras["sched"][2])
        w("    return c;\n}\n")
    w("\nstatic const Case kCases[] = {\n")
    for name, (opt_cls, kw, cpp), extras in CASES:
        a0, a1, norms = run_case(opt_cls, kw, extras)
        fn = "cfg_" + name.replace(".", "_")
        w("    {\"%s\", %s(), %s,\n" % (name, fn, "true" if "sched" in extras else "false"))
        w("     // torch.optim.%s(%s)%s\n" % (opt_cls.__name__,
                                              ", ".join("%s=%r" % kv for kv in kw.items()),
                                              (" " + ", ".join("%s" % k for k in extras))
                                              if extras else ""))
        w("     {%s},\n" % ",\n      ".join(arr(r) for r in a0))
        w("     {%s},\n" % ",\n      ".join(arr(r) for r in a1))
        w("     %s},\n" % arr(norms))
    w("};\n\n")

    w("// Learning rate of epochs 0..kEpochs-1 (param_groups[0]['lr'] before each\n")
    w("// scheduler.step()), base lr 0.1.\n")
    w("struct ScheduleCase {\n    const char* name;\n    nn::Schedule schedule;\n")
    w("    int step_size;\n    float gamma;\n    int t_max;\n    float eta_min;\n")
    w("    double lr[kEpochs];\n};\n")
    sched = [
        ("StepLR(step_size=2, gamma=0.5)", "nn::Schedule::Step", 2, 0.5, 1, 0.0,
         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=f32(0.5))),
        ("StepLR(step_size=1, gamma=0.1)", "nn::Schedule::Step", 1, 0.1, 1, 0.0,
         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=f32(0.1))),
        ("ExponentialLR(gamma=0.9)", "nn::Schedule::Exponential", 1, 0.9, 1, 0.0,
         lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=f32(0.9))),
        ("CosineAnnealingLR(T_max=4, eta_min=0.001)", "nn::Schedule::Cosine", 1, 0.1, 4, 0.001,
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=f32(0.001))),
        ("CosineAnnealingLR(T_max=3, eta_min=0)", "nn::Schedule::Cosine", 1, 0.1, 3, 0.0,
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3, eta_min=0.0)),
    ]
    w("static const ScheduleCase kSchedules[] = {\n")
    for name, kind, step_size, gamma, t_max, eta_min, make in sched:
        lrs = schedule_lrs(make)
        w("    {\"%s\", %s, %d, %s, %d, %s,\n     {%s}},\n" % (
            name, kind, step_size, lit(gamma), t_max, lit(eta_min),
            ", ".join(dlit(v) for v in lrs)))
    w("};\n\n")

    w("// torch.nn.utils.clip_grad_norm_([p0, p1], max_norm) on the step-0 gradients.\n")
    w("struct ClipCase {\n    float max_norm;\n    float total;\n")
    w("    float grad0[kN0];\n    float grad1[kN1];\n};\n")
    w("static const ClipCase kClips[] = {\n")
    for max_norm in (0.5, 1.0, 2.5, 100.0):
        p0, p1 = init_params()
        p0.grad, p1.grad = grads(0)
        total = torch.nn.utils.clip_grad_norm_([p0, p1], f32(max_norm))
        w("    {%s, %s, %s,\n     %s},\n" % (lit(max_norm), lit(float(total)),
                                            arr(p0.grad.tolist()), arr(p1.grad.tolist())))
    w("};\n\n")
    w("}  // namespace optim_ref\n")


if __name__ == "__main__":
    main()

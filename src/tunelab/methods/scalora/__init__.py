"""ScaLoRA: high-rank updates from successive low-rank increments (after Zhang, Yang, Cai & Giannakis,
arXiv 2510.23818).

LoRA's update s B A stays in one rank-r subspace. Before every `merge_every`-th optimizer step ScaLoRA
folds the current adapter into the frozen weight and continues with column-scaled factors
    B~ = B diag(beta),  A~ = diag(alpha) A,   W <- W + s (B A - B~ A~)
so the function is unchanged at the merge, while the accumulated update (everything folded into W plus
s B~ A~) grows beyond rank r. The scales are chosen analytically, with the gradient G = dL/dW of the
step about to be taken, so that that step's first-order LoRA update,
    -lr s^2 (G A~^T A~ + B~ B~^T G) = -lr s^2 sum_j (alpha_j^2 g_j a_j^T + beta_j^2 b_j h_j^T),
is the closest (Frobenius) to the full fine-tuning step -lr G, with g_j = G a_j and h_j = G^T b_j. That
is a 2r x 2r least-squares problem whose Gram entries are products of r-vectors' inner products, all
available from the LoRA gradients already computed (grad_B = s G A^T, grad_A = s B^T G):
O((d + k) r^2) per layer, no d x k gradient is formed. The gradients and AdamW's moments are carried
over equivariantly (grad_B~ = grad_B diag(alpha), grad_A~ = diag(beta) grad_A; first moments scale
like gradients, second moments by the squares), so the optimizer is not restarted and the step then
taken is the one for the scaled factors.

Checked against the paper's summaries only (its full text was not reachable from this machine): the
merge rule W~ = W + A B^T - A~ B~^T, the objective (closest low-rank step to the full fine-tuning step,
from the smoothness upper bound), column scaling and the moment transfer match. Ours: the clamp of
the squared scales to [min_scale^2, max_scale^2] and the tiny ridge in the solve (the paper's
constraint handling may differ); the merge happens every `merge_every` steps (1 = every step).

The folded part W - W0 is kept as a float32 buffer per layer (`merged`, d x k: as large as the
targeted weights, e.g. 14 MB for MiniLM's 24 attention projections) and the frozen W0 is never
written: the layer computes x (W0 + merged)^T, so reloading the buffer restores the model exactly.
`extra_state` names these buffers, so they are saved with the trainable weights in every training
checkpoint, in best/ and in the adapter folder.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.own_common import LowRankInjected, OwnMethod, wrap_linears


class ScaLoraConfig(MethodConfig):
    name: Literal["scalora"] = "scalora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="default: peft's LoRA targets for the architecture")
    merge_every: int = Field(50, ge=1, description="optimizer steps between merge-and-rescale")
    min_scale: float = Field(0.05, gt=0, description="lower clamp of the column scales")
    max_scale: float = Field(4.0, gt=0, description="upper clamp of the column scales")


class ScaLoraLinear(LowRankInjected):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base, r, dropout)
        self.scaling = alpha / r
        self.register_buffer("merged", torch.zeros_like(base.weight, dtype=torch.float32), persistent=False)

    def forward(self, x):
        w = self.base.weight
        y = F.linear(x, w + self.merged.to(w.dtype), self.base.bias)
        return y + (self.drop(x) @ self.lora_A.T.to(x.dtype)) @ self.lora_B.T.to(x.dtype) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """Everything trained into this layer: the folded increments + the live adapter."""
        return self.merged + self.scaling * (self.lora_B @ self.lora_A).float()

    @torch.no_grad()
    def merge_and_rescale(self, state: dict, min_scale: float, max_scale: float) -> None:
        A, B, s = self.lora_A, self.lora_B, self.scaling
        if A.grad is None or B.grad is None:
            return
        r = A.shape[0]
        a, b = A.float(), B.float()               # rows a_j of A; columns b_j of B
        g = B.grad.float() / s                    # columns g_j = G a_j
        h = A.grad.float() / s                    # rows h_j = G^T b_j
        aa, bb = a @ a.T, b.T @ b                 # a_i.a_j, b_i.b_j
        gg, hh = g.T @ g, h @ h.T                 # g_i.g_j, h_i.h_j
        gb = g.T @ b                              # [i, j] = g_i.b_j
        ha = h @ a.T                              # [j, i] = h_j.a_i
        gram = torch.zeros(2 * r, 2 * r, device=a.device)
        gram[:r, :r] = aa * gg
        gram[r:, r:] = bb * hh
        gram[:r, r:] = gb * ha.T                  # <g_i a_i^T, b_j h_j^T> = (g_i.b_j)(h_j.a_i)
        gram[r:, :r] = gram[:r, r:].T
        rhs = torch.cat([torch.diagonal(gg), torch.diagonal(hh)])  # <G, g_i a_i^T> = |g_i|^2, <G, b_j h_j^T> = |h_j|^2
        if not torch.isfinite(gram).all() or float(rhs.sum()) == 0.0:
            return
        ridge = 1e-6 * float(torch.diagonal(gram).abs().max()) + 1e-12
        w = torch.linalg.solve(gram + ridge * torch.eye(2 * r, device=a.device), rhs) / s**2
        w = w.clamp(min_scale**2, max_scale**2)
        alpha, beta = w[:r].sqrt(), w[r:].sqrt()   # A~ = diag(alpha) A, B~ = B diag(beta)
        live = s * (b @ a)
        A.mul_(alpha[:, None].to(A.dtype))
        B.mul_(beta[None, :].to(B.dtype))
        self.merged += live - s * (B.float() @ A.float())
        # Gradients and AdamW moments, equivariantly: grad_B~ = grad_B diag(alpha), grad_A~ = diag(beta) grad_A.
        for p, scale in ((B, alpha[None, :]), (A, beta[:, None])):
            p.grad.mul_(scale.to(p.grad.dtype))
            st = state.get(p)
            if st:
                if "exp_avg" in st:
                    st["exp_avg"].mul_(scale.to(st["exp_avg"].dtype))
                if "exp_avg_sq" in st:
                    st["exp_avg_sq"].mul_((scale**2).to(st["exp_avg_sq"].dtype))


@register
class ScaLoraMethod(OwnMethod):
    name = "scalora"
    config_cls = ScaLoraConfig

    def inject(self, model, head_modules):
        c = self.cfg
        wrap_linears(model, c.target_modules, head_modules, lambda m: ScaLoraLinear(m, c.r, c.alpha, c.dropout))

    def before_optimizer_step(self, model, optimizer, step, total_steps):
        if step == 1 or (step - 1) % self.cfg.merge_every:
            return
        state = getattr(optimizer, "optimizer", optimizer).state
        for m in model.modules():
            if isinstance(m, ScaLoraLinear):
                m.merge_and_rescale(state, self.cfg.min_scale, self.cfg.max_scale)

    def extra_state(self, model):
        return {f"{n}.merged": m.merged for n, m in model.named_modules() if isinstance(m, ScaLoraLinear)}

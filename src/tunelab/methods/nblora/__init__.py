"""NB-LoRA: norm-bounded low-rank adaptation (after Wang, Dvijotham & Manchester, arXiv 2501.19050).

The update is a smooth function of unconstrained parameters B (d x r), A (r x k), theta (r):

    dW = U diag(gamma * tanh(gain * theta)) V^T,   U = qr(B).Q (d x r),   V = qr(A^T).Q (k x r)

U and V have orthonormal columns, so the singular values of dW are exactly gamma * |tanh(gain theta_i)|: each
stays below gamma for any parameter values, however large the learning rate. A per-singular-value bound
gives any unitarily invariant norm bound; for a Schatten-p bound `bound` on a rank-r update,
gamma = bound / r^(1/p) (spectral: p = inf, gamma = bound; Frobenius: p = 2; nuclear: p = 1). The map is
smooth where B and A have full rank (random init; rank loss has measure zero) and complete: every
matrix of rank <= r with singular values < gamma is reached. theta starts at 0, so training starts at
the base model. The QR factorizations are of d x r and k x r matrices (cheap for small r).

NB: this is our own construction with the paper's properties (unconstrained, smooth, complete, explicit
singular-value bound); the paper's exact parameterization may differ.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.own_common import LowRankInjected, OwnMethod, wrap_linears


class NbLoraConfig(MethodConfig):
    name: Literal["nblora"] = "nblora"
    r: int = Field(8, ge=1)
    bound: float = Field(1.0, gt=0, description="bound on the chosen Schatten norm of every layer's update")
    norm: Literal["spectral", "frobenius", "nuclear"] | float = Field(
        "spectral", description="which norm `bound` applies to (or a Schatten p >= 1)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="default: peft's LoRA targets for the architecture")
    gain: float = Field(16.0, gt=0, description="singular values are gamma * tanh(gain * theta): with Adam moving "
                        "theta ~lr per step, gain sets how fast they grow (LoRA's grow ~sqrt(d) x lr)")


def per_value_bound(bound: float, norm, r: int) -> float:
    p = {"spectral": math.inf, "frobenius": 2.0, "nuclear": 1.0}.get(norm, norm)
    return bound if math.isinf(p) else bound / r ** (1.0 / float(p))


class NbLoraLinear(LowRankInjected):
    def __init__(self, base: nn.Linear, r: int, gamma: float, dropout: float, gain: float = 1.0):
        super().__init__(base, r, dropout)
        self.gain = gain
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))  # a random frame; theta = 0 keeps dW = 0
        self.theta = nn.Parameter(torch.zeros(r, device=self.lora_A.device))
        self.gamma = gamma

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U * gamma tanh(theta), V): dW = first @ second^T; float32, outside autocast."""
        with torch.autocast(self.lora_A.device.type, enabled=False):
            U = torch.linalg.qr(self.lora_B.float()).Q
            V = torch.linalg.qr(self.lora_A.float().T).Q
            return U * (self.gamma * torch.tanh(self.gain * self.theta.float())), V

    def extra(self, x, y):
        US, V = self.factors()
        return y + (self.drop(x) @ V.to(x.dtype)) @ US.T.to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        US, V = self.factors()
        return US @ V.T


@register
class NbLoraMethod(OwnMethod):
    name = "nblora"
    config_cls = NbLoraConfig

    def inject(self, model, head_modules):
        c = self.cfg
        gamma = per_value_bound(c.bound, c.norm, c.r)
        wrap_linears(model, c.target_modules, head_modules, lambda m: NbLoraLinear(m, c.r, gamma, c.dropout, c.gain))

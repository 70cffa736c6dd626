"""NB-LoRA: norm-bounded low-rank adaptation (Wang, Dvijotham & Manchester, arXiv 2501.19050).

The paper's parameterization, for a layer W (d_out x d_in) and rank r, from unconstrained
A~ (r x d_out), B~ (r x d_in) and, for p < inf, v (r):

  1. Cayley map of the stacked free factors (a (d_out + d_in) x r matrix [X; Y], X its top r x r block):
         Z = X - X^T + Y^T Y,      Cayley([X; Y]) = [(I - Z)(I + Z)^-1 ; -2 Y (I + Z)^-1]
     gives [A^T; B^T] = Cayley([A~^T; B~^T]) with A A^T + B B^T = I_r  (I + Z is always invertible:
     its symmetric part I + Y^T Y is positive definite);
  2. the update  dW = 2 A^T S B,  S = diag(s);  then sigma_i(dW) <= s_i for every i (sorted), and every
     rank-r matrix with sigma_i <= s_i is reached (complete); with A = U^T/sqrt2, B = V^T/sqrt2 the
     bound is attained, dW = U S V^T;
  3. a Schatten-p bound delta:  s = delta * softmax(v / eta)^(1/p), so sum_i s_i^p = delta^p and
     ||dW||_Sp <= ||s||_p = delta. For the spectral norm (p = inf) s = delta * 1 and v is not used.

Initialization: A~ = 0 and B~ with orthonormal rows (B~ B~^T = I), so Z = I, A = 0 and dW = 0 (training
starts at the base model) while the gradient reaching A~ is not zero; v = 0 (equal s_i).

Where this may deviate: the paper's text itself was not reachable from this machine; the equations
above follow a summary of it (Cayley map, dW = 2 A^T S B, the softmax form of s with temperature eta)
and were checked here by their stated properties (tests/test_methods_matrix.py: semi-orthogonality,
sigma_i(dW) <= s_i after training at lr 10, exact attainment of the bound). Which factor feeds the
Cayley's top block (here A~, the output side) and the default eta = 1 are our choices. The update is
computed in float32 outside autocast; the r x r solve costs O((d_out + d_in) r^2) per step.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.own_common import Injected, OwnMethod, wrap_linears


class NbLoraConfig(MethodConfig):
    name: Literal["nblora"] = "nblora"
    r: int = Field(8, ge=1)
    bound: float = Field(1.0, gt=0, description="delta: bound on the chosen Schatten norm of every layer's update")
    norm: Literal["spectral", "frobenius", "nuclear"] | float = Field(
        "spectral", description="which norm `bound` applies to (or a Schatten p >= 1)")
    temperature: float = Field(1.0, gt=0, description="eta in s = bound * softmax(v / eta)^(1/p) (p < inf only)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="default: peft's LoRA targets for the architecture")


def schatten_p(norm) -> float:
    p = {"spectral": math.inf, "frobenius": 2.0, "nuclear": 1.0}.get(norm, norm)
    if float(p) < 1:
        from tunelab.errors import TunelabError

        raise TunelabError(f"method.norm={norm} is not a norm: a Schatten p must be >= 1 (or spectral, frobenius, nuclear)")
    return float(p)


def cayley(stacked: torch.Tensor) -> torch.Tensor:
    """Semi-orthogonal (n x r, Q^T Q = I) image of any n x r matrix [X; Y] (paper's step 1)."""
    r = stacked.shape[1]
    X, Y = stacked[:r], stacked[r:]
    eye = torch.eye(r, dtype=stacked.dtype, device=stacked.device)
    Z = X - X.T + Y.T @ Y
    # (I - Z)(I + Z)^-1 and -2 Y (I + Z)^-1 as one solve against (I + Z)^T.
    rhs = torch.cat([eye - Z, -2.0 * Y])
    return torch.linalg.solve((eye + Z).T, rhs.T).T


class NbLoraLinear(Injected):
    def __init__(self, base: nn.Linear, r: int, bound: float, p: float, temperature: float, dropout: float):
        super().__init__(base)
        d_out, d_in = base.out_features, base.in_features
        if r > min(d_out, d_in):
            from tunelab.errors import TunelabError

            raise TunelabError(f"nblora rank r={r} exceeds the layer size {d_out}x{d_in}; lower method.r")
        dev = base.weight.device
        self.bound, self.p, self.temperature = bound, p, temperature
        self.lora_A = nn.Parameter(torch.zeros(r, d_out, device=dev))                 # A~ = 0
        self.lora_B = nn.Parameter(torch.linalg.qr(torch.randn(d_in, r, device=dev)).Q.T.contiguous())  # B~ B~^T = I
        self.v = nn.Parameter(torch.zeros(r, device=dev)) if math.isfinite(p) else None
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def singular_bounds(self) -> torch.Tensor:
        """s (paper's step 3): per-direction bounds whose Schatten-p norm is `bound`."""
        if self.v is None:
            return torch.full((self.lora_A.shape[0],), self.bound, device=self.lora_A.device)
        return self.bound * torch.softmax(self.v.float() / self.temperature, 0) ** (1.0 / self.p)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(2 A^T S, B): dW = first @ second; float32, outside autocast."""
        d_out = self.lora_A.shape[1]
        with torch.autocast(self.lora_A.device.type, enabled=False):
            Q = cayley(torch.cat([self.lora_A.float().T, self.lora_B.float().T]))
            At, B = Q[:d_out], Q[d_out:].T
            return 2.0 * At * self.singular_bounds(), B

    def extra(self, x, y):
        left, B = self.factors()
        return y + (self.drop(x) @ B.T.to(x.dtype)) @ left.T.to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        left, B = self.factors()
        return left @ B


@register
class NbLoraMethod(OwnMethod):
    name = "nblora"
    config_cls = NbLoraConfig

    def inject(self, model, head_modules):
        c = self.cfg
        p = schatten_p(c.norm)
        wrap_linears(model, c.target_modules, head_modules,
                     lambda m: NbLoraLinear(m, c.r, c.bound, p, c.temperature, c.dropout))

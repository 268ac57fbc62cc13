"""The grouped joint-bits head of Bernoulli diffusion (``bit_group`` g > 1).

The C bits of a latent position are cut into G = C / g groups of g consecutive channels;
the network gives, per group, the logits of a categorical over the 2^g patterns of
P(z_0 group | z_t), so that bits of one group are drawn jointly rather than each on its
own. Pattern v in 0..2^g - 1 holds the group's bit i (its i-th channel) as (v >> i) & 1,
and the network's output (B, G 2^g, ...) is read as (B, G, 2^g, ...).

`GroupedHead` is a mixin of `bld.models.diffusion.BernoulliDiffusion`: its methods use the
schedule (``self.T``, ``self.k_at``) and ``self.config`` of that class. docs/method.md §2.
Imports no bld module.
"""

from __future__ import annotations

import torch


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values shaped to broadcast over ``like`` (B, ...); diffusion uses it too."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


class GroupedHead:
    """The grouped head's reading of the network's output, its exact step and its draws."""

    @property
    def grouped(self) -> bool:
        """True with the grouped head (bit_group > 1)."""
        return self.config.bit_group > 1

    def patterns(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(2^g, g) float table of 0/1: row v holds the bits of pattern v, bit i = (v >> i) & 1."""
        g = self.config.bit_group
        v = torch.arange(2 ** g, device=device)
        return ((v[:, None] >> torch.arange(g, device=device)) & 1).float()

    def group_bits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) -> (B, C / g, g, ...): dimension 1 cut into groups of g."""
        g = self.config.bit_group
        if z.dim() < 2 or z.shape[1] % g:
            raise ValueError(f"bit_group {g} needs latents (B, C, ...) with C a multiple of {g}, "
                             f"got {tuple(z.shape)}; choose a bit_group that divides C")
        return z.reshape(z.shape[0], z.shape[1] // g, g, *z.shape[2:])

    @staticmethod
    def pattern_index(zg: torch.Tensor) -> torch.Tensor:
        """(B, G, g, ...) bits -> (B, G, ...) long pattern index sum_i z_i 2^i."""
        g = zg.shape[2]
        w = (2 ** torch.arange(g, device=zg.device)).view(1, 1, g, *([1] * (zg.dim() - 3)))
        return (zg.long() * w).sum(2)

    def _pattern_bits(self, v: torch.Tensor) -> torch.Tensor:
        """(B, G, ...) pattern indices -> (B, G, g, ...) float bits."""
        return self.patterns(v.device)[v].movedim(-1, 2)

    def group_logits(self, net_logits: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """log P(z_0 group = v | z_t) for every pattern v, (B, G, 2^g, ...) float32, from the
        grouped network's output (B, G 2^g, ...). method.md §2, flip parameterisation per group.

        flip: the network's categorical is over the group's flip pattern f = z_0 XOR z_t
        (f = 0, "no bit flips", dominates at small t), so log P(z_0 = v) = l[v XOR c_t] with
        c_t the pattern of z_t's group; z0: log P(z_0 = v) = l[v]. Normalised over v
        (log_softmax): logits are defined up to a constant per group, so guidance's
        (1 + w) l_cond - w l_uncond may be taken on the raw output.
        """
        g = self.config.bit_group
        V = 2 ** g
        zg = self.group_bits(z_t)
        B, G, rest = zg.shape[0], zg.shape[1], tuple(zg.shape[3:])
        if tuple(net_logits.shape) != (B, G * V, *rest):
            raise ValueError(f"the network gives outputs {tuple(net_logits.shape)}, but bit_group "
                             f"{g} over latents {tuple(z_t.shape)} needs {(B, G * V, *rest)} "
                             f"({G} groups x {V} patterns); build the Denoiser with "
                             f"bit_group={g} (resolve_prior_config sets it from "
                             "diffusion.bit_group)")
        logits = net_logits.float().reshape(B, G, V, *rest)
        if self.config.parameterization == "flip":
            c_t = self.pattern_index(zg).unsqueeze(2)  # (B, G, 1, ...)
            v = torch.arange(V, device=logits.device).view(1, 1, V, *([1] * len(rest)))
            logits = logits.gather(2, torch.bitwise_xor(v, c_t))  # l[v XOR c_t]
        return torch.log_softmax(logits, dim=2)

    def marginal_logits(self, logp: torch.Tensor) -> torch.Tensor:
        """Per-bit logits of P(z_0 bit = 1 | z_t), (B, C, ...), from log P(z_0 group = v | z_t)
        (B, G, 2^g, ...): bit i's probability is the sum over the patterns with bit i = 1;
        logit = logsumexp over those - logsumexp over the others (log space)."""
        bits = self.patterns(logp.device).bool()  # (V, g)
        out = []
        for i in range(bits.shape[1]):
            one, zero = bits[:, i].nonzero().squeeze(1), (~bits[:, i]).nonzero().squeeze(1)
            out.append(logp.index_select(2, one).logsumexp(2)
                       - logp.index_select(2, zero).logsumexp(2))
        m = torch.stack(out, dim=2)  # (B, G, g, ...)
        return m.reshape(m.shape[0], -1, *m.shape[3:])

    def group_argmax(self, logp: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) bits of the most probable pattern of each group (the final step)."""
        z = self._pattern_bits(logp.argmax(dim=2))  # (B, G, g, ...)
        return z.reshape(z.shape[0], -1, *z.shape[3:])

    def _k64_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """k_t in float64, broadcast against ``like`` (B, ...)."""
        if not torch.is_tensor(t):
            t = torch.full((like.shape[0],), int(t), dtype=torch.long)
        return _expand(self.k64.to(like.device)[t.to(like.device)], like)

    @staticmethod
    def _step_given_z0(z0: torch.Tensor, z_t: torch.Tensor, k_t: torch.Tensor,
                       k_s: torch.Tensor) -> torch.Tensor:
        """q(z_s = 1 | z_t, z_0) per bit for known bits z_0 (tensors broadcast together):
        the a/L product of docs/method.md §2 with p' = z_0,
        a1 = k_s z_0 + (1 - k_s)/2, a0 = k_s (1 - z_0) + (1 - k_s)/2 (q(z_s | z_0)),
        L1 = rho z_t + (1 - rho)/2, L0 = rho (1 - z_t) + (1 - rho)/2 (q(z_t | z_s)),
        P = a1 L1 / (a1 L1 + a0 L0); the denominator is q(z_t | z_0) > 0 for t >= 1."""
        if torch.any(k_s <= 0):
            raise ValueError("posterior needs s < T (k_s > 0)")
        if torch.any(k_s < k_t):
            raise ValueError("posterior needs s < t")
        rho = (k_t / k_s).clamp(0.0, 1.0)
        a1 = k_s * z0 + (1 - k_s) / 2
        a0 = k_s * (1 - z0) + (1 - k_s) / 2
        L1 = rho * z_t + (1 - rho) / 2
        L0 = rho * (1 - z_t) + (1 - rho) / 2
        return a1 * L1 / (a1 * L1 + a0 * L0)

    def group_weights(self, logp: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int,
                      evidence_weight: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
        """log pi(v), (B, G, 2^g, ...): the weights of the z_0 patterns in the grouped step.

        The exact step of a group (docs/method.md §2; q factorises per bit given z_0):

            P(z_s | z_t) = sum_v p(v | z_t) q(z_s | z_t, v),
            q(z_s | z_t, v) = prod_i q(z_s,i | z_t,i, v_i) = q(z_t | z_s) q(z_s | v) / q(z_t | v).

        As for one bit, remove lambda (``evidence_weight``) times z_t's evidence from the
        network's posterior, l'(v) = log p(v | z_t) - lambda log q(z_t | v), divide by the
        temperature, and treat p'(v) = softmax(l' / tau) as a prior on z_0:
        P(z_s | z_t) ∝ sum_v p'(v) q(z_s | v) q(z_t | z_s). Since
        sum_{z_s} q(z_s | v) q(z_t | z_s) = q(z_t | v), this is the mixture

            P(z_s | z_t) = sum_v pi(v) q(z_s | z_t, v),   pi(v) ∝ p'(v) q(z_t | v),

        so pi(v) ∝ p(v | z_t) q(z_t | v)^(1 - lambda) at tau = 1: lambda = 1 is the exact
        step (pi = p), lambda = 0 weighs each pattern once more by z_t's evidence. With
        d(v) the Hamming distance between v and z_t's group and E = log((1 + k_t)/(1 - k_t)),
        log q(z_t | v) = const - d(v) E, so l'(v) = log p(v) + lambda d(v) E and
        log pi = log_softmax(l' / tau - d E). For g = 1 this is exactly ``posterior_logits``.
        """
        zg = self.group_bits(z_t).float()  # (B, G, g, ...)
        P = self.patterns(z_t.device)  # (V, g)
        ones = [1] * (zg.dim() - 3)
        d = (P.sum(1).view(1, 1, -1, *ones) + zg.sum(2, keepdim=True)
             - 2 * torch.einsum("vi,bgi...->bgv...", P, zg))  # (B, G, V, ...) Hamming distance
        k_t = self._k64_at(t, d)
        if torch.any(k_t >= 1):
            raise ValueError("the grouped step needs t >= 1 (k_t < 1)")
        E = (2 * torch.atanh(k_t)).float()  # log((1 + k_t)/(1 - k_t)), 0 at t = T
        lp = logp.float()
        if evidence_weight != 0:
            lp = lp + evidence_weight * d * E  # l' = log p - lambda log q(z_t | v)
        if temperature != 1.0:
            lp = lp / temperature
        return torch.log_softmax(lp - d * E, dim=2)  # pi ∝ p' q(z_t | v)

    def group_step(self, logp: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int,
                   s: torch.Tensor | int, evidence_weight: float = 1.0, temperature: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z_s ~ P(z_s | z_t) for s < t with the grouped head, jointly per group. method.md §2.

        ``logp``: log P(z_0 group = v | z_t) (``group_logits``). Draws a pattern v from the
        weights pi of ``group_weights`` (inverse CDF, one uniform per group), then each bit
        z_s,i from q(z_s,i | z_t,i, z_0,i = v_i): an exact draw from the mixture
        sum_v pi(v) prod_i q(z_s,i | z_t,i, v_i). Returns 0/1 of ``z_t``'s shape and dtype.
        """
        w = self.group_weights(logp, z_t, t, evidence_weight, temperature).exp()
        cdf = w.cumsum(dim=2)  # (B, G, V, ...)
        u = torch.rand(cdf[:, :, :1].shape, generator=generator, device=cdf.device)
        v = (cdf <= u * cdf[:, :, -1:]).sum(dim=2).clamp_max(cdf.shape[2] - 1)  # (B, G, ...)
        z0 = self._pattern_bits(v).double()  # (B, G, g, ...)
        zg = self.group_bits(z_t).double()
        p1 = self._step_given_z0(z0, zg, self._k64_at(t, zg), self._k64_at(s, zg)).float()
        u2 = torch.rand(p1.shape, generator=generator, device=p1.device)
        return (u2 < p1).to(z_t.dtype).reshape(z_t.shape)

    def group_step_probs(self, logp: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int,
                         s: torch.Tensor | int, evidence_weight: float = 1.0,
                         temperature: float = 1.0) -> torch.Tensor:
        """P(z_s group = u | z_t) for every pattern u, (B, G, 2^g, ...) float64: the
        distribution ``group_step`` draws from, sum_v pi(v) prod_i q(u_i | z_t,i, v_i).
        Takes O(4^g) per group: for checks and small g."""
        log_w = self.group_weights(logp, z_t, t, evidence_weight, temperature).double()
        P = self.patterns(z_t.device).double()  # (V, g)
        zg = self.group_bits(z_t).double().unsqueeze(2)  # (B, G, 1, g, ...)
        z0 = P.view(1, 1, *P.shape, *([1] * (zg.dim() - 4)))  # (1, 1, V, g, ...)
        like = zg.expand(-1, -1, P.shape[0], *zg.shape[3:])
        p1 = self._step_given_z0(z0, zg, self._k64_at(t, like), self._k64_at(s, like))
        log1, log0 = p1.clamp_min(1e-300).log(), (1 - p1).clamp_min(1e-300).log()
        # log q(z_s = u | z_t, v) = sum_i u_i log p1[v, i] + (1 - u_i) log(1 - p1[v, i])
        lq = (torch.einsum("ui,bgvi...->bgvu...", P, log1)
              + torch.einsum("ui,bgvi...->bgvu...", 1 - P, log0))  # (B, G, V_v, V_u, ...)
        return (log_w.unsqueeze(3) + lq).logsumexp(dim=2).exp()

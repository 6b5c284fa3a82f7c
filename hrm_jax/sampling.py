"""Token choice shared by the generation engine and speculative decoding: greedy argmax or
nucleus sampling, with one PRNG key per (prompt, token index) so a fixed key gives the same
tokens at any batch size."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nucleus_logits(logits_BxV: jax.Array, temperature: jax.Array, top_p: jax.Array
                   ) -> jax.Array:
  """logits / temperature with everything outside the top-`top_p` mass set to -inf (the
  top token is always kept): the distribution `sample` draws from, as logits."""
  logits_BxV = logits_BxV / temperature
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
  cutoff_B = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1)
  return jnp.where(logits_BxV >= cutoff_B[:, None], logits_BxV, -jnp.inf)


def sample(logits_BxV: jax.Array, keys_B: jax.Array, temperature: jax.Array, top_p: jax.Array,
           greedy: bool) -> jax.Array:
  """Greedy argmax, or nucleus sampling at `temperature` keeping the top-`top_p` mass, each
  row with its own key."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.vmap(jax.random.categorical)(
      keys_B, nucleus_logits(logits_BxV, temperature, top_p)).astype(jnp.int32)


def token_keys(rng: jax.Array, index_B: jax.Array, token_B: jax.Array) -> jax.Array:
  """The key of token `token_B` (0 = first new token) of prompt `index_B`, per row."""
  return jax.vmap(lambda i, t: jax.random.fold_in(jax.random.fold_in(rng, i), t))(
      index_B, token_B)

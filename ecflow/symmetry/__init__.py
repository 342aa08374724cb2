"""Exact zero-loss symmetry mapping: neuron types and the minimal equivalent network.

Paper section 4, Fig. 2, appendix A.2 and Figs. A.5/A.6. A hidden layer with activation σ feeds
the next layer's pre-activation (the output, for a one-hidden-layer network) through

    y(x) = Σ_i a_i σ(z_i(x)) + c,      z_i(x) = w_i·x + b_i,      v_i = [w_i, b_i],

with ``a_i`` of shape ``(d_out,)``. At zero loss an over-parameterised student contains only a
few neuron types, each removed by one exact identity of σ's symmetry class (``Symmetry``):

``zero``
    ``a_i = 0``, or a group of duplicates whose (compensated) output weights sum to zero.
``constant``
    σ(z_i) constant over the input domain: ``w_i = 0`` or, for relu, a hyperplane outside the
    domain on the flat side. ``a_i σ(z_i)`` is folded into the next bias.
``cancelled``
    A contribution that is linear on the domain: an even+linear group whose output weights sum
    to zero but whose flipped members leave ``-2 c1 a_i z`` (a *linear-type* group), or a relu
    whose hyperplane lies outside the domain on its linear side (Fig. A.6). Their linear terms
    must cancel against the others'.
``neuron``
    A member of a kept group of duplicates ``v_i = s_i λ_i v_g`` (sign ``s_i``, scale ``λ_i``),
    merged into one neuron ``A_g σ(v_g·[x, 1])`` with the identity of its class (the table
    of the compensation algebra in :mod:`ecflow.activations`).

The linear terms accumulate into ``Θ x + β`` (``Θ`` of shape ``(d_out, d_in)``). β joins the
bias; Θ must vanish for the reduced network to keep the plain MLP form. For even+linear classes
each kept group may still be flipped (``A σ(z) = A σ(-z) + 2 c1 A z``, the last step of
Fig. A.6), which adds ``2 c1 A_g w_g`` to Θ: the reduction searches the fewest flips that make
Θ vanish on the domain, and reports ``LINEAR_REMAINDER`` when none does, rather than dropping
Θ silently.

Gradient descent also leaves neurons with small ``w`` that are each slightly curved on the
domain but whose sum is affine there; such near-linear groups are tested together and, when
their sum is affine, typed ``constant`` or ``cancelled`` as a whole ("collectively").
:func:`reduction_steps` replays a reduction step by step, as in the panels of Fig. A.6.

Tolerances are scale-aware: directions are compared relative to ``||[w, b]||`` (``param_rtol``)
and contributions relative to the rms of the layer's output over the domain (``output_rtol``).
The domain is the box ``[-h, h]^d_in`` (``h = √3`` by default, where ``z_i`` ranges exactly
over ``b_i ± h ||w_i||_1``) or the given query inputs. The reduced network is verified against
the student on the domain.

Deeper networks are reduced layer by layer from the first hidden layer; the domain of layer
``l > 0`` is the image of the query inputs (or of samples of the box) through the layers below.

The package is a pipeline of small stages that share explicit state:

==============================  ===============================================================
module                          stage
==============================  ===============================================================
:mod:`~ecflow.symmetry.types`   configuration, notes, results and statuses
:mod:`~ecflow.symmetry.groups`  typing one layer's neurons (zero, constant, cancelled, groups)
:mod:`~ecflow.symmetry.flips`   the orientation of the kept groups (the flips that cancel Θ)
:mod:`~ecflow.symmetry.reduce`  the front door: every layer typed, oriented, merged, verified
:mod:`~ecflow.symmetry.mapping` the student → teacher mapping
:mod:`~ecflow.symmetry.steps`   the reduction replayed step by step (Fig. A.6)
==============================  ===============================================================

What a flip or a rescaling does to the output weight, the next bias and Θ is not written here:
it is the activation's own algebra (:meth:`ecflow.activations.Activation.compensate`), which
clustering and reconstruction call too.
"""

from __future__ import annotations

from ecflow.symmetry import types
from ecflow.symmetry.mapping import map_to_teacher
from ecflow.symmetry.reduce import reduce_network
from ecflow.symmetry.steps import reduction_steps
from ecflow.symmetry.types import *  # noqa: F403 - the result types are the package's API

__all__ = [*types.__all__, "reduce_network", "reduction_steps", "map_to_teacher"]

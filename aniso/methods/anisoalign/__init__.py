"""AnisoAlign and its parts (docs/method.md).

* :mod:`~aniso.methods.anisoalign.aligner`: the method behind the aligner interface;
* :mod:`~aniso.methods.anisoalign.closed_form`: the bounded, evidence-adaptive closed form (the default);
* :mod:`~aniso.methods.anisoalign.frame`: the joint frame Σ, U, its complement and R;
* :mod:`~aniso.methods.anisoalign.polar`: blockwise polar coordinates and their inverse;
* :mod:`~aniso.methods.anisoalign.prior` and :mod:`~aniso.methods.anisoalign.refine`: the
  learned Stage I prior and Stage II refinement (``learned: true``; torch for training only).
"""

from __future__ import annotations

from aniso.methods.anisoalign.aligner import AnisoAlign

__all__ = ["AnisoAlign"]

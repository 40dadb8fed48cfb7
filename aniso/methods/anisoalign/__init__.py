"""AnisoAlign and its parts (docs/method.md).

* :mod:`~aniso.methods.anisoalign.aligner`: the method behind the aligner interface;
* :mod:`~aniso.methods.anisoalign.closed_form`: the bounded, evidence-adaptive closed form (the map);
* :mod:`~aniso.methods.anisoalign.frame`: the joint frame Σ, U, its complement and R (stored with the model);
* :mod:`~aniso.methods.anisoalign.polar`: blockwise polar coordinates and their inverse.

The learned stages of earlier versions (Stage I phase prior, Stage II MLP refinement) were removed:
they transferred worse downstream than the closed form (docs/quality.md, "Why the learned stages
lose").
"""

from __future__ import annotations

from aniso.methods.anisoalign.aligner import AnisoAlign

__all__ = ["AnisoAlign"]

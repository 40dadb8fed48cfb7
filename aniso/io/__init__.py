"""Where rows live: Zarr embedding stores, precomputed inputs (``.npy``, clip-retrieval folders)
read in place, and the dataset layout under a storage root.

* :mod:`~aniso.io.inputs`: what an embedding input is (one format dispatch: ``.npy``,
  clip-retrieval folder, aniso store) and its fingerprint;
* :mod:`~aniso.io.npy_view`: a ``.npy`` / clip-retrieval input read in place with a store's
  read interface;
* :mod:`~aniso.io.store`: Zarr v3 stores with shard-aligned writes and completion markers;
* :mod:`~aniso.io.layout`: every path under ``<root>/<dataset>/`` and the run key.
"""

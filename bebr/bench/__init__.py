"""The benchmark suite of bebr (``bebr bench``): SDC on multi-bit codes against Hamming search
and faiss baselines, shipped in the package. :mod:`bebr.bench.suite` runs the studies of
:mod:`bebr.bench.studies`; :mod:`bebr.bench.lib` and :mod:`bebr.bench.timing` are their shared
pieces. Needs the ``bench`` extra (``pip install 'bebr[bench]'``)."""

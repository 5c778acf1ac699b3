"""Procedural, seeded synthetic medical datasets: the default dataset and the test bed of every method.

``generate(domain, out, n, seed, size, workers)`` writes PNG images, one mask per finding and a
manifest (docs/manifest.md). Every finding changes the pixels inside its mask, with its location and
severity; texts at every granularity follow the labels. Same arguments, same bytes, whatever the
number of workers.

Domains: ``cxr`` (chest radiographs, CheXpert-named findings) and ``fundus`` (colour fundus
photographs after MGLL's fundus setting). Each domain module exposes ``FINDINGS``, ``GRANULARITIES``,
``sample_study`` (draw everything random about a record), ``render`` (a pure function of the study)
and ``write_texts``.
"""

from medgrain.data.synthetic import cxr, fundus
from medgrain.data.synthetic.common import DOMAINS, GRANULARITIES, FindingSpec, Rendering, Study, generate

FINDINGS = {"cxr": cxr.FINDINGS, "fundus": fundus.FINDINGS}

__all__ = ["DOMAINS", "FINDINGS", "GRANULARITIES", "FindingSpec", "Rendering", "Study", "cxr", "fundus", "generate"]

"""Keyword settings for the embedded store that score like the BM25 of the collections :class:`WeaviateStore`
creates, for a project that prototypes on the embedded store and serves from Weaviate (or checks one against the
other).

Weaviate splits ``content`` into words of letters and digits (its ``word`` tokenisation), removes its English
stopwords, has no stemmer, and scores with k1 1.2 and b 0.75 (our collections keep Weaviate's defaults). The
embedded store's own defaults stem and use k1 0.9, b 0.4, which rank better on SciFact but differ from Weaviate:
on a 200-document SciFact slice their keyword top 10 overlap 0.67 with Weaviate's, these settings 0.98
(``benchmarks/README.md``, "Embedded store against Weaviate").

Example::

    from dual_encoder.embedded import open_embedded_store
    from dual_encoder_weaviate import KEYWORD_CONFIG_LIKE_WEAVIATE

    store = open_embedded_store("prototype-index", keyword=KEYWORD_CONFIG_LIKE_WEAVIATE)
"""

from __future__ import annotations

from dual_encoder.keyword import KeywordConfig

#: The embedded store's keyword settings closest to Weaviate's BM25 (see the module docstring).
KEYWORD_CONFIG_LIKE_WEAVIATE = KeywordConfig(stemmer=None, stopwords="en", pattern=r"[^\W_]+", k1=1.2, b=0.75)

__all__ = ["KEYWORD_CONFIG_LIKE_WEAVIATE"]

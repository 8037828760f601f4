"""store: the on-disk gradient store. Float16 vector parts, a manifest committed atomically, one
writer lock, exact chunked scans and optional approximate FAISS indexes over the parts.
It may import io; it knows nothing of models or gradients.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.store.store": ("GradientStore",),
        "curator.store.identity": ("compare_manifests",),
        "curator.store.scan": ("exact_scores", "exact_top_k"),
        "curator.store.lock": ("StoreLock", "StoreLockedError"),
    },
)

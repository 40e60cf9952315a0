"""The logical-to-physical cluster map of one volume or snapshot.

A two-level table: a list of pages, each an ``array('q')`` of
:data:`PAGE_SIZE` entries, allocated the first time an entry in its range
is set. An empty thin volume costs a short list of ``None``; an allocated
cluster costs 8 bytes plus its share of a page (8 KiB per 1024 clusters),
so mapping memory is bounded per allocated TiB rather than per provisioned
TiB (see doc/source/volume-store.rst for the figures).

Entry values:

* ``>= 0``: the physical cluster owned by this volume,
* :data:`UNMAPPED`: nothing here; read through to the parent snapshot (or
  zeros when there is none),
* :data:`ZERO`: reads as zeros and hides the parent's data (a discard or
  write-zeroes on a clone).
"""

from array import array

UNMAPPED = -1
ZERO = -2

PAGE_SHIFT = 10
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1
PAGE_BYTES = PAGE_SIZE * 8

_EMPTY_PAGE = array('q', [UNMAPPED]) * PAGE_SIZE


class ClusterMap:
    __slots__ = ('pages',)

    def __init__(self):
        self.pages: list = []

    def get(self, lcl: int) -> int:
        pages = self.pages
        i = lcl >> PAGE_SHIFT
        if i < len(pages):
            page = pages[i]
            if page is not None:
                return page[lcl & PAGE_MASK]
        return UNMAPPED

    def set(self, lcl: int, value: int) -> int:
        """Set one entry and return the value it replaces."""
        pages = self.pages
        i = lcl >> PAGE_SHIFT
        if i >= len(pages):
            if value == UNMAPPED:
                return UNMAPPED
            pages.extend([None] * (i + 1 - len(pages)))
        page = pages[i]
        if page is None:
            if value == UNMAPPED:
                return UNMAPPED
            page = pages[i] = array('q', _EMPTY_PAGE)
        j = lcl & PAGE_MASK
        old = page[j]
        page[j] = value
        return old

    def set_run(self, lcl: int, pcl: int, count: int) -> list:
        """Map ``count`` clusters from ``lcl`` to ``pcl..pcl+count-1``.

        Page by page, in C loops: a thick terabyte is a million entries.
        Returns the owned physical clusters the run replaced.
        """
        replaced = []
        end = lcl + count
        while lcl < end:
            i = lcl >> PAGE_SHIFT
            j = lcl & PAGE_MASK
            n = min(PAGE_SIZE - j, end - lcl)
            if i >= len(self.pages):
                self.pages.extend([None] * (i + 1 - len(self.pages)))
            page = self.pages[i]
            if page is None:
                page = self.pages[i] = array('q', _EMPTY_PAGE)
            old = page[j:j + n]
            if max(old) >= 0:
                replaced.extend(v for v in old if v >= 0)
            page[j:j + n] = array('q', range(pcl, pcl + n))
            lcl += n
            pcl += n
        return replaced

    def owned_clusters(self) -> list:
        """Every physical cluster this map owns, as one list."""
        out = []
        for page in self.pages:
            if page is not None and max(page) >= 0:
                out.extend([v for v in page if v >= 0])
        return out

    def entries(self):
        """Yield ``(logical, value)`` for every entry that is not UNMAPPED."""
        for i, page in enumerate(self.pages):
            if page is None:
                continue
            base = i << PAGE_SHIFT
            for j, value in enumerate(page):
                if value != UNMAPPED:
                    yield base + j, value

    def owned(self):
        """Yield ``(logical, physical)`` for every owned cluster."""
        for lcl, value in self.entries():
            if value >= 0:
                yield lcl, value

    def physical_clusters(self):
        """Yield every physical cluster this map owns (ownership checks)."""
        for page in self.pages:
            if page is not None:
                for value in page:
                    if value >= 0:
                        yield value

    def nonempty_pages(self):
        for i, page in enumerate(self.pages):
            if page is not None:
                yield i, page

    def load_page(self, index: int, raw: bytes) -> None:
        page = array('q')
        page.frombytes(raw)
        if len(page) != PAGE_SIZE:
            raise ValueError('map page of %d entries' % len(page))
        if index >= len(self.pages):
            self.pages.extend([None] * (index + 1 - len(self.pages)))
        self.pages[index] = page

    def memory_bytes(self) -> int:
        """Approximate memory held by the pages (for benchmarks and stats)."""
        return sum(PAGE_BYTES for p in self.pages if p is not None) + \
            8 * len(self.pages)

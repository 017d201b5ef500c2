# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, annotation_typing=False, embedsignature=True
"""Compiled twin of :mod:`reelcdn.edge.lru` (the LRU index with byte accounting).

Why this module looks the way it does:

* It is a *twin*, not a fork: :class:`LruIndex` has the pure class's contract (same methods,
  results, errors and messages), and ``tests/test_lru.py`` runs the same cases on both plus
  differential tests that replay random operation sequences on both and compare every step.
  The size checks of the slow path and their error messages are the pure module's own functions.
* The order is a doubly linked list threaded through one C array of slots (key, charge, prev,
  next), with freed slots kept on a free list and reused: after warm-up an insert or eviction
  allocates nothing but the dict entry, and a touch is one dict lookup and four index writes.
  The dict maps each key to its slot number as a prebuilt ``int`` (one per slot, made when the
  array grows), so no integer object is created per insert either.
* Slots hold a strong reference to their key (the same object the dict holds), so evictions hand
  back the stored key objects and need no dict walk. Keys must be exact ``str``: their hash is
  cached and their comparison runs no Python code, so the dict operations made while the list is
  being relinked cannot call back into this object.
* The class is ``final`` (its helpers are direct C calls) and is not tracked by the GC: it refers
  only to a dict of ``str → int`` and a list of ``int``, which can never reference it back.
* Signatures carry no annotations (``annotation_typing=False``): Cython would turn them into
  argument checks the pure twin does not make. The types are in ``_lru.pyi``.
"""

cimport cython
from cpython.dict cimport PyDict_DelItem, PyDict_GetItemWithError, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsSsize_t
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport uint64_t

from reelcdn.edge import lru as _pure
from reelcdn.edge.lru import MAX_SIZE

__all__ = ["MAX_SIZE", "LruIndex"]

cdef object _pure_size = _pure._size
cdef object _pure_not_a_key = _pure._not_a_key

cdef enum:
    _NIL = -1            # no slot: end of the list or of the free list
    _FIRST_SLOTS = 16    # slots allocated by the first insert


ctypedef struct Slot:
    PyObject* key        # strong reference while in use, NULL on the free list
    uint64_t charge
    Py_ssize_t prev      # toward the oldest; _NIL at the oldest
    Py_ssize_t next      # toward the newest (_NIL at the newest); next free slot when free


cdef int _size(object name, object value, uint64_t* out) except -1:
    """``value`` as a charge or capacity into ``out``; the pure twin's checks when unusual."""
    cdef int overflow = 0
    cdef long long fast
    if type(value) is int:
        fast = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow == 0 and fast >= 0:
            out[0] = <uint64_t>fast
            return 0
    # Not an exact int, negative or beyond 64 bits: the pure function raises exactly what the
    # twin raises, or returns the int (from __index__) to use.
    value = _pure_size(name, value)
    out[0] = <uint64_t>PyLong_AsLongLongAndOverflow(value, &overflow)  # in range: no overflow
    return 0


@cython.final
@cython.no_gc
cdef class LruIndex:
    """Keys in least → most recently used order, each with a charge; ``bytes`` ≤ ``capacity``."""

    cdef Slot* _slots
    cdef Py_ssize_t _allocated
    cdef Py_ssize_t _count
    cdef Py_ssize_t _oldest
    cdef Py_ssize_t _newest
    cdef Py_ssize_t _free
    cdef uint64_t _bytes
    cdef uint64_t _capacity
    cdef dict _map        # key → its slot number (an int of _ints)
    cdef list _ints       # _ints[i] is i: the dict values, made once per slot

    def __cinit__(self, *args, **kwargs):
        self._slots = NULL
        self._allocated = 0
        self._count = 0
        self._oldest = _NIL
        self._newest = _NIL
        self._free = _NIL
        self._bytes = 0
        self._capacity = 0
        self._map = {}
        self._ints = []

    def __init__(self, capacity):
        cdef uint64_t checked
        _size("capacity", capacity, &checked)
        self._clear()
        self._capacity = checked

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._slots is not NULL:
            for i in range(self._allocated):
                Py_XDECREF(self._slots[i].key)
            PyMem_Free(self._slots)
            self._slots = NULL

    @property
    def bytes(self):
        """Sum of the charges of the keys held."""
        return self._bytes

    @property
    def capacity(self):
        """The byte budget (change it with :meth:`resize`)."""
        return self._capacity

    def __len__(self):
        return self._count

    def __contains__(self, key):
        return key in self._map

    def __iter__(self):
        """The keys, oldest first, as they were when iteration started."""
        cdef list keys = []
        cdef Py_ssize_t i = self._oldest
        while i != _NIL:
            keys.append(<object>self._slots[i].key)
            i = self._slots[i].next
        return iter(keys)

    def __repr__(self):
        return f"LruIndex(capacity={self._capacity}, bytes={self._bytes}, len={self._count})"

    def __reduce__(self):
        raise TypeError("LruIndex cannot be pickled or copied")

    def charge_of(self, key):
        """The charge ``key`` was inserted with; ``KeyError`` if it is not held."""
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        if found is NULL:
            raise KeyError(key)
        return self._slots[PyLong_AsSsize_t(<object>found)].charge

    def touch(self, key):
        """Mark ``key`` most recently used; False if it is not held (nothing changes then)."""
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        if found is NULL:
            return False
        self._to_newest(PyLong_AsSsize_t(<object>found))
        return True

    def insert(self, key, charge):
        """Hold ``key`` as the most recently used with ``charge`` (replacing its previous charge).

        Returns the keys evicted to get back within the capacity, oldest first. A charge above the
        capacity is refused: nothing changes and nothing is evicted.
        """
        cdef uint64_t c
        cdef Py_ssize_t i
        cdef PyObject* found
        if type(key) is not str:
            raise _pure_not_a_key(key)
        _size("charge", charge, &c)
        if c > self._capacity:
            return []
        found = PyDict_GetItemWithError(self._map, key)
        if found is not NULL:
            i = PyLong_AsSsize_t(<object>found)
            self._bytes = self._bytes - self._slots[i].charge + c
            self._slots[i].charge = c
            self._to_newest(i)
        else:
            if self._free == _NIL:
                self._grow()
            i = self._free
            # The dict first: if it fails (MemoryError) the slot is still free and nothing changed.
            PyDict_SetItem(self._map, key, <object>PyList_GET_ITEM(self._ints, i))
            self._free = self._slots[i].next
            Py_INCREF(key)
            self._slots[i].key = <PyObject*>key
            self._slots[i].charge = c
            self._link_newest(i)
            self._count += 1
            self._bytes += c  # <= 2 * MAX_SIZE: no overflow in 64 bits
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    def remove(self, key):
        """Forget ``key``; False if it was not held."""
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        if found is NULL:
            return False
        self._release(PyLong_AsSsize_t(<object>found))
        return True

    def resize(self, capacity):
        """Change the capacity; returns the keys evicted to fit in it, oldest first."""
        cdef uint64_t checked
        _size("capacity", capacity, &checked)
        self._capacity = checked
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    # --- the list ---------------------------------------------------------------------------

    cdef inline void _unlink(self, Py_ssize_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        if s.prev != _NIL:
            self._slots[s.prev].next = s.next
        else:
            self._oldest = s.next
        if s.next != _NIL:
            self._slots[s.next].prev = s.prev
        else:
            self._newest = s.prev

    cdef inline void _link_newest(self, Py_ssize_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        s.prev = self._newest
        s.next = _NIL
        if self._newest != _NIL:
            self._slots[self._newest].next = i
        else:
            self._oldest = i
        self._newest = i

    cdef inline void _to_newest(self, Py_ssize_t i) noexcept:
        if i != self._newest:
            self._unlink(i)
            self._link_newest(i)

    cdef int _release(self, Py_ssize_t i) except -1:
        """Drop slot ``i``: out of the dict and the list, its charge, onto the free list."""
        cdef PyObject* key = self._slots[i].key
        # The stored key (an exact str) is the one deleted: no Python code runs in the dict.
        PyDict_DelItem(self._map, <object>key)
        self._unlink(i)
        self._bytes -= self._slots[i].charge
        self._slots[i].key = NULL
        self._slots[i].next = self._free
        self._free = i
        self._count -= 1
        Py_XDECREF(key)
        return 0

    cdef list _evict(self):
        """Drop the oldest keys until ``bytes <= capacity``; the keys dropped, oldest first."""
        cdef list evicted = []
        cdef Py_ssize_t i
        while self._bytes > self._capacity:
            i = self._oldest
            evicted.append(<object>self._slots[i].key)  # a reference of its own, kept
            self._release(i)
        return evicted

    cdef int _grow(self) except -1:
        """Double the slot array (16 at first) and put the new slots on the free list."""
        cdef Py_ssize_t old = self._allocated
        cdef Py_ssize_t new = old * 2 if old else _FIRST_SLOTS
        cdef Py_ssize_t i
        cdef Slot* slots
        if len(self._ints) < new:
            self._ints.extend(range(len(self._ints), new))
        slots = <Slot*>PyMem_Realloc(self._slots, new * sizeof(Slot))
        if slots is NULL:
            raise MemoryError()
        self._slots = slots
        self._allocated = new
        for i in range(new - 1, old - 1, -1):  # lowest first on the free list
            slots[i].key = NULL
            slots[i].charge = 0
            slots[i].prev = _NIL
            slots[i].next = self._free
            self._free = i
        return 0

    cdef int _clear(self) except -1:
        """Forget every key (``__init__`` called again resets, as it does on the pure twin)."""
        cdef Py_ssize_t i
        cdef PyObject* key
        self._map = {}
        self._count = 0
        self._oldest = _NIL
        self._newest = _NIL
        self._free = _NIL
        self._bytes = 0
        for i in range(self._allocated - 1, -1, -1):
            key = self._slots[i].key
            self._slots[i].key = NULL
            self._slots[i].charge = 0
            self._slots[i].prev = _NIL
            self._slots[i].next = self._free
            self._free = i
            Py_XDECREF(key)
        return 0

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, annotation_typing=False, embedsignature=True
"""Compiled twin of :mod:`reelcdn.extensions._lru_py` (the LRU index with byte accounting).

Why this module looks the way it does:

* It is a *twin*, not a fork: :class:`LruIndex` has the pure class's contract (same methods,
  results, errors and messages), and ``tests/test_lru.py`` runs the same cases on both plus
  differential tests that replay random operation sequences on both and compare every step.
  The size checks of the slow path and their error messages are the pure module's own functions.
* Everything lives in two C arrays and no Python object is made per key: the *slots* (key, its
  hash, charge, and the prev/next links of the recency list, 32 bytes) and a power-of-two *table*
  of slot numbers, open addressing with linear probing at most half full, deletions by backward
  shift (no tombstones). Freed slots go on a free list and are reused. A touch is one probe of
  the table (the key's cached hash, then a pointer comparison when the caller passes the very
  string the index holds, as ``MemoryStore.lookup`` does, else a string comparison) and four link
  writes; an insert or an eviction allocates nothing after warm-up. A ``dict`` of key → slot number was the first version: it needed an ``int`` object per
  slot and a pointer chase through it, and cost ~70 bytes per key more than this table.
* Lookups follow ``dict``'s rules, so that the twins (the pure one *is* a dict) find the same
  keys: identity, else equal hash and ``==``. A ``str`` subclass's ``__eq__`` may run Python code;
  if it changes the index, the lookup restarts, as ``dict``'s does. Stored keys are exact ``str``
  (``insert`` refuses others), whose hash is cached and whose comparison runs no Python code.
* Slots hold a strong reference to their key, so evictions hand back the stored key objects.
* The class is ``final`` (its helpers are direct C calls) and holds no Python containers, so it
  needs no GC support. The hot methods take positional arguments only (in both twins), which
  lets Cython give them the cheapest calling convention (``METH_O`` for one argument).
* Slot numbers are ``int32``: 2**31 - 1 keys at most (about 64 GiB of slots alone).
* Signatures carry no annotations (``annotation_typing=False``): Cython would turn them into
  argument checks the pure twin does not make. The types are in ``_lru.pyi``.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport INT32_MAX, int32_t, uint64_t
from libc.string cimport memset

from reelcdn.extensions import _lru_py as _pure
from reelcdn.extensions._lru_py import MAX_SIZE

__all__ = ["MAX_SIZE", "LruIndex"]

cdef object _pure_size = _pure._size
cdef object _pure_not_a_key = _pure._not_a_key

cdef enum:
    _NIL = -1            # no slot: end of a list, or an empty table cell
    _FIRST_SLOTS = 16    # slots allocated by the first insert


ctypedef struct Slot:
    PyObject* key        # strong reference while in use, NULL on the free list
    Py_hash_t hash       # the key's hash, for probing and rebuilding the table
    uint64_t charge
    int32_t prev         # toward the oldest; _NIL at the oldest
    int32_t next         # toward the newest (_NIL at the newest); next free slot when free


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
    cdef int32_t* _table      # slot numbers by hash position, _NIL when empty
    cdef size_t _mask         # table size - 1 (the size is a power of two), 0 without a table
    cdef Py_ssize_t _allocated
    cdef Py_ssize_t _count
    cdef int32_t _oldest
    cdef int32_t _newest
    cdef int32_t _free
    cdef uint64_t _bytes
    cdef uint64_t _capacity
    cdef size_t _version      # changes whenever keys come or go: lookups restart on it

    def __cinit__(self, *args, **kwargs):
        self._slots = NULL
        self._table = NULL
        self._mask = 0
        self._allocated = 0
        self._count = 0
        self._oldest = _NIL
        self._newest = _NIL
        self._free = _NIL
        self._bytes = 0
        self._capacity = 0
        self._version = 0

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
        PyMem_Free(self._table)
        self._table = NULL

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
        return self._find(key) != _NIL

    def __iter__(self):
        """The keys, oldest first, as they were when iteration started."""
        cdef list keys = []
        cdef int32_t i = self._oldest
        while i != _NIL:
            keys.append(<object>self._slots[i].key)
            i = self._slots[i].next
        return iter(keys)

    def __repr__(self):
        return f"LruIndex(capacity={self._capacity}, bytes={self._bytes}, len={self._count})"

    def __reduce__(self):
        raise TypeError("LruIndex cannot be pickled or copied")

    def charge_of(self, key, /):
        """The charge ``key`` was inserted with; ``KeyError`` if it is not held."""
        cdef int32_t i = self._find(key)
        if i == _NIL:
            raise KeyError(key)
        return self._slots[i].charge

    def touch(self, key, /):
        """Mark ``key`` most recently used; False if it is not held (nothing changes then)."""
        cdef int32_t i = self._find(key)
        if i == _NIL:
            return False
        if i != self._newest:
            self._unlink(i)
            self._link_newest(i)
        return True

    def insert(self, key, charge, /):
        """Hold ``key`` as the most recently used with ``charge`` (replacing its previous charge).

        Returns the keys evicted to get back within the capacity, oldest first. A charge above the
        capacity is refused: nothing changes and nothing is evicted.
        """
        cdef uint64_t c
        cdef int32_t i
        cdef Py_hash_t h
        if type(key) is not str:
            raise _pure_not_a_key(key)
        _size("charge", charge, &c)
        if c > self._capacity:
            return []
        h = PyObject_Hash(key)  # cached in the str
        i = self._find_hashed(key, h)
        if i != _NIL:
            self._bytes = self._bytes - self._slots[i].charge + c
            self._slots[i].charge = c
            if i != self._newest:
                self._unlink(i)
                self._link_newest(i)
        else:
            # Room first (both may raise MemoryError): then nothing below can fail.
            if self._free == _NIL:
                self._grow_slots()
            if <size_t>(self._count + 1) * 2 > self._mask + 1 or self._table is NULL:
                self._grow_table()
            i = self._free
            self._free = self._slots[i].next
            Py_INCREF(key)
            self._slots[i].key = <PyObject*>key
            self._slots[i].hash = h
            self._slots[i].charge = c
            self._table[self._empty_cell(h)] = i
            self._link_newest(i)
            self._count += 1
            self._version += 1
            self._bytes += c  # <= 2 * MAX_SIZE: no overflow in 64 bits
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    def remove(self, key, /):
        """Forget ``key``; False if it was not held."""
        cdef int32_t i = self._find(key)
        if i == _NIL:
            return False
        self._release(i)
        return True

    def resize(self, capacity, /):
        """Change the capacity; returns the keys evicted to fit in it, oldest first."""
        cdef uint64_t checked
        _size("capacity", capacity, &checked)
        self._capacity = checked
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    # --- the table ----------------------------------------------------------------------------

    cdef inline int32_t _find(self, object key) except -2:
        """The slot holding ``key``, or _NIL; hashes it first (TypeError if unhashable)."""
        return self._find_hashed(key, PyObject_Hash(key))

    cdef int32_t _find_hashed(self, object key, Py_hash_t h) except -2:
        cdef size_t pos
        cdef int32_t i
        cdef size_t version
        cdef int equal
        if self._table is NULL:
            return _NIL
        while True:  # a restart after an __eq__ that changed the index
            pos = <size_t>h & self._mask
            while True:
                i = self._table[pos]
                if i == _NIL:
                    return _NIL
                if self._slots[i].key == <PyObject*>key:
                    return i
                if self._slots[i].hash == h:
                    version = self._version
                    equal = PyObject_RichCompareBool(<object>self._slots[i].key, key, Py_EQ)
                    if version != self._version:
                        break
                    if equal:
                        return i
                pos = (pos + 1) & self._mask

    cdef inline size_t _empty_cell(self, Py_hash_t h) noexcept:
        cdef size_t pos = <size_t>h & self._mask
        while self._table[pos] != _NIL:
            pos = (pos + 1) & self._mask
        return pos

    cdef void _unfile(self, int32_t i) noexcept:
        """Take slot ``i`` out of the table, shifting back the cells probed past it."""
        cdef size_t mask = self._mask
        cdef size_t hole = <size_t>self._slots[i].hash & mask
        cdef size_t pos
        cdef size_t home
        cdef int32_t j
        while self._table[hole] != i:
            hole = (hole + 1) & mask
        pos = hole
        while True:
            pos = (pos + 1) & mask
            j = self._table[pos]
            if j == _NIL:
                break
            home = <size_t>self._slots[j].hash & mask
            # j may fill the hole unless its home lies cyclically in (hole, pos].
            if (pos - home) & mask >= (pos - hole) & mask:
                self._table[hole] = j
                hole = pos
        self._table[hole] = _NIL

    cdef int _grow_table(self) except -1:
        """Double the table (16 cells at first) and file every held slot again."""
        cdef size_t size = (self._mask + 1) * 2 if self._table is not NULL else 16
        cdef int32_t* table = <int32_t*>PyMem_Realloc(self._table, size * sizeof(int32_t))
        cdef int32_t i
        if table is NULL:
            raise MemoryError()
        memset(table, 0xFF, size * sizeof(int32_t))  # every cell _NIL (-1)
        self._table = table
        self._mask = size - 1
        i = self._oldest
        while i != _NIL:
            self._table[self._empty_cell(self._slots[i].hash)] = i
            i = self._slots[i].next
        return 0

    # --- the list and the slots ---------------------------------------------------------------

    cdef inline void _unlink(self, int32_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        if s.prev != _NIL:
            self._slots[s.prev].next = s.next
        else:
            self._oldest = s.next
        if s.next != _NIL:
            self._slots[s.next].prev = s.prev
        else:
            self._newest = s.prev

    cdef inline void _link_newest(self, int32_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        s.prev = self._newest
        s.next = _NIL
        if self._newest != _NIL:
            self._slots[self._newest].next = i
        else:
            self._oldest = i
        self._newest = i

    cdef void _release(self, int32_t i) noexcept:
        """Drop slot ``i``: out of the table and the list, its charge, onto the free list."""
        cdef PyObject* key = self._slots[i].key
        self._unfile(i)
        self._unlink(i)
        self._bytes -= self._slots[i].charge
        self._slots[i].key = NULL
        self._slots[i].next = self._free
        self._free = i
        self._count -= 1
        self._version += 1
        Py_XDECREF(key)  # a str: frees nothing that could call back into the index

    cdef list _evict(self):
        """Drop the oldest keys until ``bytes <= capacity``; the keys dropped, oldest first."""
        cdef list evicted = []
        cdef int32_t i
        while self._bytes > self._capacity:
            i = self._oldest
            evicted.append(<object>self._slots[i].key)  # a reference of its own, kept
            self._release(i)
        return evicted

    cdef int _grow_slots(self) except -1:
        """Double the slot array (16 at first) and put the new slots on the free list."""
        cdef Py_ssize_t old = self._allocated
        cdef Py_ssize_t new = old * 2 if old else _FIRST_SLOTS
        cdef Py_ssize_t i
        cdef Slot* slots
        if new > INT32_MAX:
            new = INT32_MAX
            if new <= old:
                raise MemoryError("LruIndex is full (2**31 - 1 keys)")
        slots = <Slot*>PyMem_Realloc(self._slots, new * sizeof(Slot))
        if slots is NULL:
            raise MemoryError()
        self._slots = slots
        self._allocated = new
        for i in range(new - 1, old - 1, -1):  # lowest first on the free list
            slots[i].key = NULL
            slots[i].hash = 0
            slots[i].charge = 0
            slots[i].prev = _NIL
            slots[i].next = self._free
            self._free = <int32_t>i
        return 0

    cdef int _clear(self) except -1:
        """Forget every key (``__init__`` called again resets, as it does on the pure twin)."""
        cdef Py_ssize_t i
        cdef PyObject* key
        self._count = 0
        self._oldest = _NIL
        self._newest = _NIL
        self._free = _NIL
        self._bytes = 0
        self._version += 1
        if self._table is not NULL:
            memset(self._table, 0xFF, (self._mask + 1) * sizeof(int32_t))
        for i in range(self._allocated - 1, -1, -1):
            key = self._slots[i].key
            self._slots[i].key = NULL
            self._slots[i].charge = 0
            self._slots[i].prev = _NIL
            self._slots[i].next = self._free
            self._free = <int32_t>i
            Py_XDECREF(key)
        return 0

// Serialisation of TurboQuant indexes and of the FAISS wrappers that hold them.
#pragma once

#include <faiss/Index.h>
#include <faiss/impl/io.h>

namespace faiss {

/** Write an index. TurboQuant indexes get our own fourccs; IDMap, IDMap2,
 * PreTransform and Refine wrappers holding one are written by us too (under our
 * fourccs), and every subtree without TurboQuant is handed to faiss::write_index,
 * so files with no TurboQuant inside are plain FAISS files. */
void tq_write_index(const Index* idx, IOWriter* f);
/// write to a file: to `fname.tmp-*` in the same directory, fsync, then rename
void tq_write_index(const Index* idx, const char* fname);

/** Read an index written by tq_write_index or faiss::write_index. Every count and
 * size is checked against sane limits and against the bytes actually present before
 * memory is allocated; any inconsistency raises an exception. */
Index* tq_read_index(IOReader* f, int io_flags = 0);
Index* tq_read_index(const char* fname, int io_flags = 0);

/// true if the index or any index it wraps is a TurboQuant index
bool tq_contains_turboquant(const Index* idx);

/// deep copy of any index tree (through serialisation when TurboQuant is inside)
Index* tq_clone_index(const Index* idx);

} // namespace faiss

// index_factory with TurboQuant tokens; everything else is FAISS's own factory.
#pragma once

#include <faiss/Index.h>

namespace faiss {

/** Like faiss::index_factory, plus the TurboQuant codec tokens
 *   TQ<b>        b-bit TurboQuant codes (b = 1..8)
 *   TQ<b>q<m>    the same plus m QJL sign bits of the residual
 * alone or inside any FAISS composition that FAISS can build with "Flat" in that
 * position: IDMap / IDMap2, pre-transforms (PCA, RR, OPQ, ...), IVF<n> (any coarse
 * quantizer), refinement (RFlat, Refine(...)). FAISS builds the structure with a
 * placeholder and the placeholder is replaced by the TurboQuant index. Descriptions
 * without a TQ token are handed to faiss::index_factory unchanged. */
Index* tq_index_factory(int d, const char* description, MetricType metric = METRIC_L2);

} // namespace faiss

// Exact top-k selection on the GPU for umrank's miner (host side: src/mine/cuda/search.rs).
//
// Every hit is a 64-bit rank key: the score's bits mapped so that unsigned order is float order, in the high half,
// and the document's tie rank (its position in id order) in the low half. Unsigned key order is then exactly the
// CPU miner's ranking order (score descending, then tie rank descending), keys of one query are all distinct, and
// key 0 is never a real hit: it marks "no hit" (an empty slot, an excluded document).
//
// One block owns one query row of a chunk of scores and merges it into that query's running list of the k best
// keys (kept sorted, best first). The chunk is never sorted. The block finds a lower bound that at most CAPACITY
// candidates (running list included) pass, either the running list's k-th key (the common case once the list is
// full: few scores of a new chunk beat it) or one found by a radix descent over the key bits; it gathers those
// candidates into shared memory, sorts only them, and keeps the first k.

typedef unsigned int u32;
typedef unsigned long long u64;

#define SELECT_THREADS 512
#define CAPACITY 4096
#define DIGIT_BITS 11
#define MAX_BINS (1 << DIGIT_BITS)
#define NEG_INF_BITS 0xff800000u

// Unsigned order of the result is the numeric order of finite floats; -0 is folded into +0 first, so that the two
// tie as they do numerically (the CPU miner's score_cmp does the same).
__device__ __forceinline__ u32 ordered_bits(float score) {
    u32 bits = __float_as_uint(score == 0.0f ? 0.0f : score);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// The rank key of candidate `i` of a row: the chunk's scores first, then the running list. Excluded documents
// were overwritten with -inf (no real score is infinite: the host bounds the inputs) and map to 0.
__device__ __forceinline__ u64 candidate_key(const float* row, const u32* ties, u32 cols, const u64* kept, u32 i) {
    if (i >= cols) {
        return kept[i - cols];
    }
    float score = row[i];
    if (__float_as_uint(score) == NEG_INF_BITS) {
        return 0;
    }
    return ((u64)ordered_bits(score) << 32) | ties[i];
}

struct Digit {
    u32 found;     // 1 when the wanted rank lies in this level's histogram
    u32 digit;     // the bin that holds it
    u32 above;     // candidates in bins above it
    u32 in_bin;    // candidates in it
};

// Warp 0 finds the bin that holds the r-th largest counted candidate: lanes sum slices of bins (lane 0 the top
// slice), a warp scan locates the slice, and its lane walks it.
__device__ void find_digit(const u32* hist, u32 bins, u32 r, Digit* out) {
    const u32 lane = threadIdx.x & 31;
    const u32 per_lane = bins / 32;
    const u32 top = bins - lane * per_lane;
    u32 sum = 0;
    for (u32 b = top - per_lane; b < top; ++b) {
        sum += hist[b];
    }
    u32 inclusive = sum;
    for (u32 offset = 1; offset < 32; offset <<= 1) {
        u32 before = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) {
            inclusive += before;
        }
    }
    const u32 exclusive = inclusive - sum;
    const bool mine = exclusive < r && r <= inclusive;
    const u32 owners = __ballot_sync(0xffffffffu, mine);
    if (lane == 0 && owners == 0) {
        out->found = 0;
    }
    if (mine) {
        u32 acc = exclusive;
        for (u32 b = top; b-- > top - per_lane;) {
            if (acc + hist[b] >= r) {
                out->found = 1;
                out->digit = b;
                out->above = acc;
                out->in_bin = hist[b];
                break;
            }
            acc += hist[b];
        }
    }
}

// Collects the keys above `lo` into `buffer` (at most CAPACITY are stored) and returns how many there are.
__device__ u32 gather(const float* row, const u32* ties, u32 cols, const u64* kept, u32 k, u64 lo, u64* buffer,
                      u32* count) {
    if (threadIdx.x == 0) {
        *count = 0;
    }
    __syncthreads();
    const u32 total = cols + k;
    for (u32 i = threadIdx.x; i < total; i += blockDim.x) {
        u64 key = candidate_key(row, ties, cols, kept, i);
        if (key > lo) {
            u32 slot = atomicAdd(count, 1u);
            if (slot < CAPACITY) {
                buffer[slot] = key;
            }
        }
    }
    __syncthreads();
    u32 n = *count;
    __syncthreads();
    return n;
}

// Radix descent over the key bits, DIGIT_BITS at a time from the top, towards the k-th largest candidate above
// `lo`. It stops as soon as every candidate at or above the current prefix fits in the buffer and returns the
// bound just below that prefix (or `lo` itself when fewer than k candidates exist). It always stops: at full
// depth the prefix is one key with k - 1 candidates above it, and k <= CAPACITY.
__device__ u64 refine_bound(const float* row, const u32* ties, u32 cols, const u64* kept, u32 k, u64 lo, u32* hist,
                            Digit* digit) {
    const u32 total = cols + k;
    const u32 lane = threadIdx.x & 31;
    u64 prefix = 0;
    u32 consumed = 0;
    u32 rank = k;
    u32 above = 0;
    while (true) {
        const u32 width = min((u32)DIGIT_BITS, 64u - consumed);
        const u32 shift = 64u - consumed - width;
        const u32 bins = 1u << width;
        const u64 mask = (u64)bins - 1;
        for (u32 b = threadIdx.x; b < bins; b += blockDim.x) {
            hist[b] = 0;
        }
        __syncthreads();
        // Every lane of a warp runs the same number of iterations, so the warp can merge equal bins before the
        // shared-memory atomic (scores concentrate in few bins of the top digits).
        for (u32 base = 0; base < total; base += blockDim.x) {
            const u32 i = base + threadIdx.x;
            u32 bin = 0xffffffffu;
            if (i < total) {
                u64 key = candidate_key(row, ties, cols, kept, i);
                if (key > lo && (consumed == 0 || (key >> (64u - consumed)) == prefix)) {
                    bin = (u32)((key >> shift) & mask);
                }
            }
            const u32 peers = __match_any_sync(0xffffffffu, bin);
            if (bin != 0xffffffffu && lane == (u32)(__ffs(peers) - 1)) {
                atomicAdd(&hist[bin], (u32)__popc(peers));
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            find_digit(hist, bins, rank, digit);
        }
        __syncthreads();
        const Digit level = *digit;
        __syncthreads();
        if (!level.found) {
            return lo;
        }
        above += level.above;
        rank -= level.above;
        prefix = (prefix << width) | level.digit;
        consumed += width;
        if (above + level.in_bin <= CAPACITY) {
            const u64 smallest = prefix << (64u - consumed);
            return smallest > lo ? smallest - 1 : lo;
        }
    }
}

// Sorts buffer[0..n) descending (bitonic network over the next power of two, zero-padded).
__device__ void sort_descending(u64* buffer, u32 n) {
    u32 size = 1;
    while (size < n) {
        size <<= 1;
    }
    for (u32 i = n + threadIdx.x; i < size; i += blockDim.x) {
        buffer[i] = 0;
    }
    __syncthreads();
    for (u32 run = 2; run <= size; run <<= 1) {
        for (u32 stride = run >> 1; stride > 0; stride >>= 1) {
            for (u32 i = threadIdx.x; i < size; i += blockDim.x) {
                const u32 j = i ^ stride;
                if (j > i) {
                    const bool descending = (i & run) == 0;
                    const u64 a = buffer[i];
                    const u64 b = buffer[j];
                    if ((a < b) == descending) {
                        buffer[i] = b;
                        buffer[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// Merges one chunk of scores into the running top-k lists. Grid: one block per query row of the wave.
//   scores      rows x cols, the wave's queries against the chunk (excluded entries are overwritten with -inf)
//   ties        cols tie ranks of the chunk's documents
//   first_doc   corpus-wide index of the chunk's first document
//   ex_offsets  rows + 1 offsets into ex_docs: the wave's exclusion lists (corpus-wide document indices)
//   kept        rows x k running keys, best first, 0 for an empty slot; updated in place
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    topk_merge_chunk(float* scores, u32 cols, const u32* ties, u32 first_doc, const u64* ex_offsets,
                     const u32* ex_docs, u64* kept, u32 k) {
    __shared__ u64 buffer[CAPACITY];
    __shared__ u32 hist[MAX_BINS];
    __shared__ u32 count;
    __shared__ Digit digit;

    float* row = scores + (u64)blockIdx.x * cols;
    u64* row_kept = kept + (u64)blockIdx.x * k;

    for (u64 e = ex_offsets[blockIdx.x] + threadIdx.x; e < ex_offsets[blockIdx.x + 1]; e += blockDim.x) {
        const u32 doc = ex_docs[e];
        if (doc >= first_doc && doc - first_doc < cols) {
            row[doc - first_doc] = __uint_as_float(NEG_INF_BITS);
        }
    }
    __syncthreads();

    const u64 floor = row_kept[k - 1];
    u64 lo = floor > 0 ? floor - 1 : 0;
    u32 n = CAPACITY + 1;
    if (floor > 0 || cols + k <= CAPACITY) {
        n = gather(row, ties, cols, row_kept, k, lo, buffer, &count);
    }
    if (n > CAPACITY) {
        lo = refine_bound(row, ties, cols, row_kept, k, lo, hist, &digit);
        n = gather(row, ties, cols, row_kept, k, lo, buffer, &count);
    }
    sort_descending(buffer, n);
    for (u32 i = threadIdx.x; i < k; i += blockDim.x) {
        row_kept[i] = i < n ? buffer[i] : 0;
    }
}

// One pass over n values: the largest absolute value's bits (sign cleared, so integer order is float order and
// infinities and NaNs sit above every finite value) and the index of the first non-finite value.
//   stats[0] = max bits (start at 0), first_bad[0] = first non-finite index (start at u64 max)
extern "C" __global__ void scan_values(const float* values, u64 n, u32* stats, u64* first_bad) {
    u32 local = 0;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u32 bits = __float_as_uint(values[i]) & 0x7fffffffu;
        if (bits >= 0x7f800000u) {
            atomicMin(first_bad, i);
        }
        local = max(local, bits);
    }
    for (u32 offset = 16; offset > 0; offset >>= 1) {
        local = max(local, __shfl_down_sync(0xffffffffu, local, offset));
    }
    if ((threadIdx.x & 31) == 0) {
        atomicMax(stats, local);
    }
}

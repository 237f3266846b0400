// Runs the CUDA kernels of src/mine/cuda/topk.cu, unchanged, on the CPU, so that the selection logic is checked on
// machines without a GPU (tests/it/mine_cuda_sim.rs builds and runs this with `-I src/mine/cuda`). Every CUDA thread is
// an OS thread, __syncthreads is a barrier, the warp intrinsics are a per-warp exchange, and blocks run one at a
// time (so the kernels' __shared__ variables can be statics). The kernels only ever loop over blockDim.x, so blocks
// of 32 or 64 threads exercise the same code paths as the 512 the host launches, much faster; one shape uses 512.
//
// Checks: topk_merge_chunk, driven over chunks of a score matrix the way src/mine/cuda/search.rs drives it, against
// a brute-force top-k (score descending with -0 = +0, then tie rank descending; exclusions left out), on score
// distributions that reach every branch (whole-chunk gather, radix descent from an empty list, descent into the
// tie-rank bits, a full list overflowed by a later chunk, k at the limit, k beyond the corpus); and scan_values
// against a direct scan. Prints one line per case and "N failures"; exits non-zero on any failure.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;

static std::barrier<>* block_barrier;
struct Warp {
    std::unique_ptr<std::barrier<>> bar;
    unsigned long long vals[32];
};
static std::vector<Warp> warps;

#define __syncthreads() block_barrier->arrive_and_wait()
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static

static inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
static inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
using std::max;
using std::min;

static inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
static inline unsigned atomicMax(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned cur = a.load();
    while (cur < v && !a.compare_exchange_weak(cur, v)) {
    }
    return cur;
}
static inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::atomic_ref<unsigned long long> a(*p);
    unsigned long long cur = a.load();
    while (cur > v && !a.compare_exchange_weak(cur, v)) {
    }
    return cur;
}

static inline unsigned lane_id() { return threadIdx.x & 31; }
static inline Warp& my_warp() { return warps[threadIdx.x / 32]; }

// Each lane publishes a value; f computes the lane's result from all 32.
template <class T, class F>
static T warp_exchange(T v, F f) {
    Warp& w = my_warp();
    w.vals[lane_id()] = (unsigned long long)v;
    w.bar->arrive_and_wait();
    T r = f(w.vals);
    w.bar->arrive_and_wait();
    return r;
}
template <class T>
static T __shfl_up_sync(unsigned, T v, unsigned offset) {
    unsigned lane = lane_id();
    return warp_exchange(v, [&](unsigned long long* vals) { return lane >= offset ? (T)vals[lane - offset] : v; });
}
template <class T>
static T __shfl_down_sync(unsigned, T v, unsigned offset) {
    unsigned lane = lane_id();
    return warp_exchange(v, [&](unsigned long long* vals) { return lane + offset < 32 ? (T)vals[lane + offset] : v; });
}
static unsigned __ballot_sync(unsigned, int pred) {
    return warp_exchange((unsigned)(pred != 0), [&](unsigned long long* vals) {
        unsigned m = 0;
        for (unsigned i = 0; i < 32; ++i) m |= (vals[i] ? 1u : 0u) << i;
        return m;
    });
}
static unsigned __match_any_sync(unsigned, unsigned v) {
    return warp_exchange(v, [&](unsigned long long* vals) {
        unsigned m = 0;
        for (unsigned i = 0; i < 32; ++i) m |= (vals[i] == v ? 1u : 0u) << i;
        return m;
    });
}

#include "topk.cu"

// Blocks run one after the other (the kernels' __shared__ variables are statics here): each thread walks the grid,
// and a barrier after each block keeps the next from starting while a thread is still in it.
static void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    std::barrier<> bar(block);
    block_barrier = &bar;
    warps.clear();
    warps.resize(block / 32);
    for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx.x = b;
                kernel();
                bar.arrive_and_wait();
            }
        });
    }
    for (auto& th : threads) th.join();
}

struct Ref {
    float score;
    u32 tie;
    u32 doc;
};

static int failures = 0;

// scores: Q x N (full matrix), ties: N, exclusions per query (sorted). Runs the chunk loop as search.rs does.
static void run_case(const char* name, const std::vector<float>& scores, u32 Q, u32 N, const std::vector<u32>& ties,
                     const std::vector<std::vector<u32>>& excl, u32 k, u32 chunk, u32 block) {
    // exclusion offsets / docs as search.rs builds them
    std::vector<u64> offsets{0};
    std::vector<u32> exdocs;
    for (u32 q = 0; q < Q; ++q) {
        exdocs.insert(exdocs.end(), excl[q].begin(), excl[q].end());
        offsets.push_back(exdocs.size());
    }
    if (exdocs.empty()) exdocs.push_back(N);
    std::vector<u64> kept((size_t)Q * k, 0);
    for (u32 start = 0; start < N; start += chunk) {
        u32 cols = std::min(chunk, N - start);
        std::vector<float> chunk_scores((size_t)Q * cols);
        for (u32 q = 0; q < Q; ++q)
            for (u32 c = 0; c < cols; ++c) chunk_scores[(size_t)q * cols + c] = scores[(size_t)q * N + start + c];
        launch(Q, block, [&] {
            topk_merge_chunk(chunk_scores.data(), cols, ties.data() + start, start, offsets.data(), exdocs.data(),
                             kept.data(), k);
        });
    }
    // reference
    for (u32 q = 0; q < Q; ++q) {
        std::vector<Ref> all;
        for (u32 d = 0; d < N; ++d) {
            if (std::binary_search(excl[q].begin(), excl[q].end(), d)) continue;
            all.push_back({scores[(size_t)q * N + d] + 0.0f, ties[d], d});
        }
        std::sort(all.begin(), all.end(), [](const Ref& a, const Ref& b) {
            if (a.score != b.score) return a.score > b.score;
            return a.tie > b.tie;
        });
        size_t want = std::min<size_t>(k, all.size());
        for (size_t i = 0; i < k; ++i) {
            u64 key = kept[(size_t)q * k + i];
            if (i >= want) {
                if (key != 0) {
                    printf("FAIL %s q%u pos %zu: expected empty, got key %llx\n", name, q, i, key);
                    ++failures;
                    return;
                }
                continue;
            }
            u32 ordered = (u32)(key >> 32);
            u32 bits = (ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered;
            float s = std::bit_cast<float>(bits);
            u32 tie = (u32)key;
            if (key == 0 || s != all[i].score || tie != all[i].tie) {
                printf("FAIL %s q%u pos %zu: got (%g, %u) want (%g, %u)\n", name, q, i, s, tie, all[i].score,
                       all[i].tie);
                ++failures;
                return;
            }
        }
    }
    printf("ok   %s (Q=%u N=%u k=%u chunk=%u block=%u)\n", name, Q, N, k, chunk, block);
}

int main() {
    std::mt19937_64 rng(7);
    auto perm = [&](u32 n) {
        std::vector<u32> p(n);
        for (u32 i = 0; i < n; ++i) p[i] = i;
        std::shuffle(p.begin(), p.end(), rng);
        return p;
    };
    auto excl_random = [&](u32 Q, u32 N, u32 per) {
        std::vector<std::vector<u32>> e(Q);
        for (auto& l : e) {
            for (u32 i = 0; i < per; ++i) l.push_back(rng() % N);
            std::sort(l.begin(), l.end());
            l.erase(std::unique(l.begin(), l.end()), l.end());
        }
        return e;
    };
    struct Dist {
        const char* name;
        std::function<float(u32, u32)> f;
    };
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<Dist> dists = {
        {"continuous", [&](u32, u32) { return uni(rng); }},
        {"five-levels", [&](u32, u32) { return (float)((int)(rng() % 5) - 2) * 0.5f; }},
        {"all-equal", [&](u32, u32) { return 0.0f; }},
        {"signed-zeros", [&](u32, u32) { return (rng() & 1) ? 0.0f : -0.0f; }},
        {"ascending", [&](u32, u32 d) { return (float)(d / 4); }},
        {"descending", [&](u32, u32 d) { return -(float)(d / 4); }},
        // Distinct high scores above a plateau that holds the k-th: the descent must go below the top digit even
        // though the plateau's bin alone fits the buffer.
        {"plateau", [&](u32, u32 d) { return d % 3 == 0 ? 1000.0f + (float)d * 64.0f : 1.0f; }},
    };
    struct Shape {
        u32 Q, N, k, chunk, block, excl;
    };
    std::vector<Shape> shapes = {
        {3, 150, 10, 7, 64, 3},      // list fills over many tiny chunks
        {3, 5000, 50, 5000, 64, 20}, // one chunk, radix descent from an empty list
        {2, 9000, 100, 3000, 64, 5}, // later chunks, some overflow the buffer (ascending)
        {2, 6000, 2048, 2500, 64, 0},// k at the limit
        {2, 4000, 1, 4000, 32, 2},   // k = 1
        {2, 100, 150, 40, 64, 10},   // k beyond the corpus
        {2, 10000, 64, 10000, 512, 8}, // the real block size
        {2, 6000, 2048, 6000, 64, 0}, // k at the limit, one chunk
    };
    for (auto& shape : shapes) {
        for (auto& dist : dists) {
            std::vector<float> scores((size_t)shape.Q * shape.N);
            for (u32 q = 0; q < shape.Q; ++q)
                for (u32 d = 0; d < shape.N; ++d) scores[(size_t)q * shape.N + d] = dist.f(q, d);
            auto ties = perm(shape.N);
            auto excl = excl_random(shape.Q, shape.N, shape.excl);
            run_case(dist.name, scores, shape.Q, shape.N, ties, excl, shape.k, shape.chunk, shape.block);
        }
    }
    // scan_values
    for (u32 n : {0u, 1u, 1000u, 70000u}) {
        std::vector<float> v(n);
        for (auto& x : v) x = uni(rng) * 3.0f;
        for (int bad = 0; bad < 2; ++bad) {
            u64 bad_at = ~0ull;
            if (bad && n > 10) {
                bad_at = n / 3;
                v[bad_at] = (rng() & 1) ? INFINITY : NAN;
                v[n / 2] = NAN;
            }
            u32 stats = 0;
            u64 first_bad = ~0ull;
            u32 blocks = std::max<u32>(1, std::min<u32>((n + 255) / 256, 8));
            if (n > 0) launch(blocks, 256, [&] { scan_values(v.data(), n, &stats, &first_bad); });
            float want = 0;
            u64 want_bad = ~0ull;
            for (u64 i = 0; i < n; ++i) {
                if (!std::isfinite(v[i])) { want_bad = std::min(want_bad, i); continue; }
                want = std::max(want, std::fabs(v[i]));
            }
            bool ok = first_bad == want_bad && (want_bad != ~0ull || std::bit_cast<float>(stats) == want);
            printf("%s scan n=%u bad=%d\n", ok ? "ok  " : "FAIL", n, bad);
            if (!ok) ++failures;
        }
    }
    printf("%d failures\n", failures);
    return failures != 0;
}

"""C++ source of the fused decode layer's all-reduce over a shared-memory segment (built with
the other native kernels by native.py, before layer_csrc.py, which calls it).

Why: under tensor parallelism on CPU the fused layer's two all-reduces per layer went back
to Python (the multi-process executor's ShmCommunicator, backends/torch/shm_comm.py): ~30
µs of interpreter work each, 18 of them a step, plus a polling loop whose every turn is a
few microseconds of Python. This is the same protocol on the same segment, so the
communicator's own Python collectives (the embedding's, the head's gather) and these
interleave: one sequence number for both (the communicator's state tensor), each rank
copies its partial sum into its slot of the half the sequence's parity names, publishes
the sequence number, waits until every rank has, and sums the slots in rank order,
rounding after each add as torch's `total += part` does -- so both give the same bits.
"""

SHM_ALLREDUCE = r"""
#include <chrono>
#include <sched.h>

// The segment as shm_comm.py lays it out: `size` counters of 64 bytes, then two halves of
// `size` slots of slot_bytes. state: int64 [3] -- the sequence number, then nanoseconds in
// these collectives and, of them, waiting for the other ranks (for profiles).
struct ShmComm {
  char* base = nullptr;
  int64_t rank = 0, size = 0, slot_bytes = 0;
  torch::Tensor state;
  double timeout_s = 0.0;
  py::object peers_alive;
};

static inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Wait until every rank has published seq. A peer's process that is gone, or a wait past
// timeout_s, raises (checked every ~50 ms, as the Python collective does).
static void shm_wait(const ShmComm& c, int64_t seq) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto next_check = start + std::chrono::milliseconds(50);
  for (int64_t r = 0; r < c.size; ++r) {
    const int64_t* counter = reinterpret_cast<const int64_t*>(c.base + r * 64);
    for (uint32_t spins = 1; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < seq; ++spins) {
      if (spins < 2048) {
        spin_pause();
        continue;
      }
      sched_yield();  // a long wait: leave the core to whoever needs it
      const auto now = clock::now();
      if (now < next_check) continue;
      if (!c.peers_alive.is_none() && !c.peers_alive().cast<bool>())
        throw std::runtime_error("tensor-parallel rank(s) [" + std::to_string(r) + "] died");
      if (std::chrono::duration<double>(now - start).count() > c.timeout_s)
        throw std::runtime_error("tensor-parallel rank(s) [" + std::to_string(r) +
                                 "] did not reach the collective in " +
                                 std::to_string(static_cast<int64_t>(c.timeout_s)) + " s");
      next_check = now + std::chrono::milliseconds(50);
    }
  }
}

// x (contiguous, fits a slot) summed over the ranks in place.
static void shm_all_reduce(const ShmComm& c, torch::Tensor& x) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  int64_t* st = c.state.data_ptr<int64_t>();
  const int64_t seq = ++st[0], half = seq % 2, bytes = x.numel() * x.element_size();
  char* data = c.base + c.size * 64;
  auto slot = [&](int64_t r) { return data + (half * c.size + r) * c.slot_bytes; };
  std::memcpy(slot(c.rank), x.data_ptr(), bytes);
  __atomic_store_n(reinterpret_cast<int64_t*>(c.base + c.rank * 64), seq, __ATOMIC_RELEASE);
  const auto t1 = clock::now();
  shm_wait(c, seq);
  const auto t2 = clock::now();
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "shm_sum", [&] {
    scalar_t* out = x.data_ptr<scalar_t>();
    const scalar_t* first = reinterpret_cast<const scalar_t*>(slot(0));
    for (int64_t i = 0; i < n; ++i) out[i] = first[i];
    for (int64_t r = 1; r < c.size; ++r) {
      const scalar_t* part = reinterpret_cast<const scalar_t*>(slot(r));
      for (int64_t i = 0; i < n; ++i) out[i] = out[i] + part[i];  // rounded as torch's +=
    }
  });
  const auto t3 = clock::now();
  st[1] += std::chrono::duration_cast<std::chrono::nanoseconds>(t3 - t0).count();
  st[2] += std::chrono::duration_cast<std::chrono::nanoseconds>(t2 - t1).count();
}
"""

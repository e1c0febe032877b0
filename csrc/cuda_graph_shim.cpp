// ctmask's CUDA graph shim: a C interface over `at::cuda::CUDAGraph` and CUDA side streams,
// which tch does not bind. Built by build.rs into libctmask_cuda_graph.so, embedded in the
// binary and loaded at run time by src/cuda_graph.rs only where CUDA is usable.
//
// Rules: no C++ exception escapes (each entry point catches everything and keeps the message
// in a thread-local string, read with ctmask_graph_last_error()); every status is an int:
//   0 ok, -1 a libtorch/CUDA error (message set), -2 misuse (null handle, wrong state).
// No CUDA runtime function is linked directly (the few used on the error path are looked up
// with dlsym in the libraries libtorch_cuda already loaded), so the only link-time
// dependencies are libtorch_cuda, libc10_cuda and libc10.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/headeronly/version.h>

#include <dlfcn.h>

#include <exception>
#include <new>
#include <optional>
#include <string>

namespace {

thread_local std::string last_error;

void set_error(std::string msg) { last_error = std::move(msg); }

// Run `f`, turning any exception into -1 and its message.
template <typename F>
int guarded(const char* what, F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    set_error(std::string(what) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(std::string(what) + ": " + e.what());
  } catch (...) {
    set_error(std::string(what) + ": unknown C++ exception");
  }
  return -1;
}

struct Graph {
  at::cuda::CUDAGraph graph;
  // Slack after the graph object: should the libtorch loaded at run time have a slightly larger
  // CUDAGraph than these headers, its constructor writes here instead of into the heap.
  // (src/cuda_graph.rs also refuses a libtorch of another major.minor version.)
  alignas(16) unsigned char slack[512] = {};
  // The side stream made current by ctmask_stream_begin, restored by ctmask_stream_end.
  std::optional<c10::StreamGuard> side;
  // The private memory pool of the capture and its device (for cleanup after a failure).
  at::cuda::MempoolId_t pool{0, 0};
  c10::DeviceIndex device = -1;
  bool capturing = false;
  bool captured = false;
};

Graph* as_graph(void* g) {
  if (g == nullptr) {
    set_error("null graph handle");
  }
  return static_cast<Graph*>(g);
}

// CUDA runtime entry points used only to end a capture libtorch could not end; looked up in the
// already loaded CUDA runtime so the shim does not link one (and cannot pick a second copy).
using StreamIsCapturing = int (*)(cudaStream_t, cudaStreamCaptureStatus*);
using StreamEndCapture = int (*)(cudaStream_t, cudaGraph_t*);
using GraphDestroy = int (*)(cudaGraph_t);

// End a capture still open on `stream` and drop its graph. Returns a note for the error text.
std::string force_end_capture(cudaStream_t stream) {
  auto is_capturing = reinterpret_cast<StreamIsCapturing>(
      dlsym(RTLD_DEFAULT, "cudaStreamIsCapturing"));
  auto end_capture = reinterpret_cast<StreamEndCapture>(
      dlsym(RTLD_DEFAULT, "cudaStreamEndCapture"));
  auto destroy = reinterpret_cast<GraphDestroy>(dlsym(RTLD_DEFAULT, "cudaGraphDestroy"));
  if (is_capturing == nullptr || end_capture == nullptr) {
    return "; cannot check the capture stream (CUDA runtime symbols not found)";
  }
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (is_capturing(stream, &status) != 0) {
    return "; cudaStreamIsCapturing failed";
  }
  if (status == cudaStreamCaptureStatusNone) {
    return "";
  }
  cudaGraph_t raw = nullptr;
  end_capture(stream, &raw);
  if (raw != nullptr && destroy != nullptr) {
    destroy(raw);
  }
  return "; capture ended by the shim";
}

// Clear the CUDA runtime's last (non-sticky) error left by the failed capture, so the next
// kernel launch check does not report it.
void clear_cuda_error() {
  using GetLastError = int (*)();
  auto get_last_error =
      reinterpret_cast<GetLastError>(dlsym(RTLD_DEFAULT, "cudaGetLastError"));
  if (get_last_error != nullptr) {
    get_last_error();
  }
}

}  // namespace

extern "C" {

// The message of the last failure on this thread ("" if none). Valid until the next call on
// this thread.
const char* ctmask_graph_last_error() { return last_error.c_str(); }

// The libtorch version whose headers built this shim, e.g. "2.11.0".
const char* ctmask_graph_torch_version() { return TORCH_VERSION; }

// A new, empty graph (NULL on failure; see ctmask_graph_last_error).
void* ctmask_graph_new() {
  void* out = nullptr;
  int rc = guarded("ctmask_graph_new", [&] {
    out = new Graph();
    return 0;
  });
  return rc == 0 ? out : nullptr;
}

int ctmask_graph_capture_abort(void* g);

// Free a graph (NULL is a no-op). Aborts an open capture and restores the original stream if a
// side stream is still current.
void ctmask_graph_free(void* g) {
  if (g == nullptr) {
    return;
  }
  if (static_cast<Graph*>(g)->capturing) {
    ctmask_graph_capture_abort(g);
  }
  guarded("ctmask_graph_free", [&] {
    delete static_cast<Graph*>(g);
    return 0;
  });
}

// Make a fresh side stream of `device` current, after it waits for the stream that was current.
int ctmask_stream_begin(void* g, int device) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  if (graph->side.has_value()) {
    set_error("ctmask_stream_begin: a side stream is already current");
    return -2;
  }
  return guarded("ctmask_stream_begin", [&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::Stream original = c10::cuda::getCurrentCUDAStream(index);
    c10::Stream side = c10::cuda::getStreamFromPool(false, index);
    c10::Event ready(c10::DeviceType::CUDA);
    ready.record(original);
    side.wait(ready);
    graph->side.emplace(side);
    graph->device = index;
    return 0;
  });
}

// Make the original stream wait for the side stream, and make it current again.
int ctmask_stream_end(void* g) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  if (!graph->side.has_value()) {
    set_error("ctmask_stream_end: no side stream is current");
    return -2;
  }
  if (graph->capturing) {
    set_error("ctmask_stream_end: a capture is still open");
    return -2;
  }
  return guarded("ctmask_stream_end", [&] {
    c10::Stream side = graph->side->current_stream();
    c10::Stream original = graph->side->original_stream();
    // Restore first, so a failing wait still leaves the original stream current.
    graph->side.reset();
    c10::Event done(c10::DeviceType::CUDA);
    done.record(side);
    original.wait(done);
    return 0;
  });
}

// Synchronise the device, then begin capturing on the current (side) stream into a private
// memory pool. mode: 0 global, 1 thread-local, 2 relaxed (cudaStreamCaptureMode).
int ctmask_graph_capture_begin(void* g, int mode) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  if (!graph->side.has_value() || graph->capturing || graph->captured) {
    set_error("ctmask_graph_capture_begin: needs a side stream and a graph not yet captured");
    return -2;
  }
  cudaStreamCaptureMode capture_mode;
  switch (mode) {
    case 0:
      capture_mode = cudaStreamCaptureModeGlobal;
      break;
    case 1:
      capture_mode = cudaStreamCaptureModeThreadLocal;
      break;
    case 2:
      capture_mode = cudaStreamCaptureModeRelaxed;
      break;
    default:
      set_error("ctmask_graph_capture_begin: unknown capture mode");
      return -2;
  }
  int rc = guarded("ctmask_graph_capture_begin", [&] {
    // As torch.cuda.graph does: no work of the warm-up may still be in flight.
    c10::cuda::device_synchronize();
    graph->pool = at::cuda::graph_pool_handle();
    // Set first, so that a capture_begin failing half-way is cleaned up below.
    graph->capturing = true;
    graph->graph.capture_begin(graph->pool, capture_mode);
    return 0;
  });
  if (rc != 0 && graph->capturing) {
    std::string error = last_error;
    ctmask_graph_capture_abort(g);
    set_error(error);
  }
  return rc;
}

// End the capture and instantiate the graph. On failure, call ctmask_graph_capture_abort.
int ctmask_graph_capture_end(void* g) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  if (!graph->capturing) {
    set_error("ctmask_graph_capture_end: no capture is open");
    return -2;
  }
  return guarded("ctmask_graph_capture_end", [&] {
    graph->graph.capture_end();
    graph->capturing = false;
    graph->captured = true;
    return 0;
  });
}

// Clean up after a failed capture (the captured function failed, or capture_end did): end the
// capture if it is still open, stop routing allocations to the graph's pool, release the pool
// and reset the graph, so the process carries on eagerly. The graph cannot be replayed after.
// Returns 0 when everything was cleaned, -1 with the first problem in the last error.
int ctmask_graph_capture_abort(void* g) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  std::string problems;
  auto note = [&](int rc) {
    if (rc != 0) {
      problems += (problems.empty() ? "" : "; ") + last_error;
    }
  };
  if (graph->capturing) {
    graph->capturing = false;
    // libtorch's own end first: it unregisters the capture and the pool when it gets that far.
    int ended = guarded("capture_end", [&] {
      graph->graph.capture_end();
      return 0;
    });
    if (ended != 0) {
      note(guarded("end capture", [&] {
        if (graph->side.has_value()) {
          c10::cuda::CUDAStream s(c10::cuda::CUDAStream::UNCHECKED,
                                  graph->side->current_stream());
          std::string what = force_end_capture(s.stream());
          if (!what.empty() && what != "; capture ended by the shim") {
            set_error(what.substr(2));
            return -1;
          }
        }
        return 0;
      }));
      // capture_end stops before endAllocateToPool when cudaStreamEndCapture fails (an
      // invalidated capture): stop it here, else the allocator defers frees for ever. Throws
      // "not currently recording" when libtorch already did: that is fine.
      guarded("endAllocateToPool", [&] {
        c10::cuda::CUDACachingAllocator::endAllocateToPool(graph->device, graph->pool);
        return 0;
      });
      // CUDAGraph::pool() succeeds only once capture_end got as far as capture_ended_, in which
      // case reset() releases the pool itself; otherwise release it here (exactly once).
      bool ended_in_torch = guarded("pool", [&] {
                              graph->graph.pool();
                              return 0;
                            }) == 0;
      if (!ended_in_torch) {
        note(guarded("releasePool", [&] {
          c10::cuda::CUDACachingAllocator::releasePool(graph->device, graph->pool);
          return 0;
        }));
      }
    }
  }
  graph->captured = false;
  clear_cuda_error();
  note(guarded("reset", [&] {
    graph->graph.reset();
    return 0;
  }));
  if (!problems.empty()) {
    set_error("ctmask_graph_capture_abort: " + problems);
    return -1;
  }
  return 0;
}

// Replay the captured graph on the current stream of the capture's device.
int ctmask_graph_replay(void* g) {
  Graph* graph = as_graph(g);
  if (graph == nullptr) {
    return -2;
  }
  if (!graph->captured) {
    set_error("ctmask_graph_replay: the graph holds no successful capture");
    return -2;
  }
  return guarded("ctmask_graph_replay", [&] {
    c10::DeviceGuard on(c10::Device(c10::DeviceType::CUDA, graph->device));
    graph->graph.replay();
    return 0;
  });
}

}  // extern "C"

// The communicator's own threads (the engine, the tcp progress thread): a
// name each (so perf, top and `kiln bench ddp` tell them apart) and the
// scheduling policy KILN_COMM_THREAD_POLICY asks for.
//
// Note [The comm threads' scheduling]: where a rank is bound to one core and
// backward fills it, every wake-up of a comm thread (a socket ready, an
// operation to start or finish) preempts the training thread, evicting part
// of its GEMM's cache. Under SCHED_BATCH a woken comm thread does not preempt
// the running thread; it runs at the next tick or when the training thread
// sleeps, with a fair share of the core as before (the socket buffers cover
// the few milliseconds of delay on a slow link). SCHED_IDLE would run it only
// on an otherwise idle core: starved for all of backward where compute fills
// the core. Measured (docs/perf.md, issue 24, session 17; DDP over a 1 Gbit/s
// link, one rank per core): under batch the comm threads were almost never
// preempted themselves and the training thread 10-20% less often, but the
// step did not move beyond this VM's run-to-run noise, so "normal" stays the
// default and "batch" is there to try.
#pragma once

namespace kiln::comm {

// Call at the start of the thread. Never fails: a name or policy the host
// refuses is logged once and the thread runs as it was.
void become_comm_thread(const char* name);

}  // namespace kiln::comm

// A bidirectional-stream reactor whose hand-offs through gRPC ThreadSanitizer can see.
//
// What it is for: gRPC's callback API runs a stream's reactions on whichever of its threads an
// event lands, one at a time, and OnDone after every other reaction. That ordering passes
// through Debian's gRPC and Abseil, which are not built with TSan, so to TSan every field of a
// reactor looks raced. This base class declares the ordering once (tsan_annotations.h): each
// request to gRPC (Read, Write, End) hands the object off before and after the call (StartWrite
// and Finish read the response and the stream before the operation starts), and each reaction
// takes it over before the subclass's code runs and hands it off when it returns. Handlers
// derive from it and carry no annotations of their own; outside a TSan build every annotation
// is an empty inline function.
//
// Who uses it: server/physmem_service.cc (KeepAliveReactor). Thread-safety: as gRPC's reactor —
// reactions never overlap, and nothing may touch the object after a request returns.
#ifndef PHYSMEM_SERVER_VISIBLE_REACTOR_H_
#define PHYSMEM_SERVER_VISIBLE_REACTOR_H_

#include <grpcpp/support/server_callback.h>

#include "server/tsan_annotations.h"

namespace physmem {

template <typename Request, typename Response>
class VisibleBidiReactor : public grpc::ServerBidiReactor<Request, Response> {
 protected:
  // The reactions, with the object taken over. ReactionDone runs last; the default deletes it.
  virtual void ReadDone(bool ok) = 0;
  virtual void WriteDone(bool ok) = 0;
  virtual void ReactionDone() { delete this; }

  void Read(Request* req) {
    TsanHandOff(this);
    this->StartRead(req);
    TsanHandOff(this);
  }
  void Write(const Response* resp) {
    TsanHandOff(this);
    this->StartWrite(resp);
    TsanHandOff(this);
  }
  void End(const grpc::Status& s) {
    TsanHandOff(this);
    this->Finish(s);
    TsanHandOff(this);
  }

 private:
  void OnReadDone(bool ok) final {
    TsanTakeOver(this);
    ReadDone(ok);
    TsanHandOff(this);  // OnDone, which deletes, runs after this reaction returns
  }
  void OnWriteDone(bool ok) final {
    TsanTakeOver(this);
    WriteDone(ok);
    TsanHandOff(this);
  }
  void OnDone() final {
    TsanTakeOver(this);
    ReactionDone();
  }
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_VISIBLE_REACTOR_H_

import Foundation
import PGProtocol
import Synchronization
import Testing
import WALCore

@testable import PGReplication

#if canImport(Glibc)
import Glibc
#endif

/// Records the status updates a connection would send; `flushCompletes` false plays a socket that is full.
fileprivate final class RecordingOutput: CopyBothOutput, @unchecked Sendable {
    var updates: [StandbyStatusUpdate] = []
    var flushCompletes = true
    var failing = false
    /// False plays libpq's output buffer refusing the message.
    var accepting = true

    func putCopyData(_ bytes: [UInt8]) throws -> Bool {
        if failing { throw PostgresError("connection lost", connectionLost: true) }
        guard accepting else { return false }
        updates.append(try bytes.withUnsafeBytes { try StandbyStatusUpdate.decode($0) })
        return true
    }

    func flush() throws -> Bool { flushCompletes }
}

@Suite struct StatusReportingTests {
    /// Whether the gate's wake-up pipe holds a byte (and empties it).
    func woken(_ gate: StreamGate) -> Bool {
        var byte: UInt8 = 0
        var any = false
        while read(gate.wakeRead, &byte, 1) == 1 { any = true }
        return any
    }

    func feedback(_ flushed: UInt64) -> StreamFeedback {
        StreamFeedback(written: LSN(flushed), flushed: LSN(flushed))
    }

    /// Runs `body` on another thread and waits for it: the lock the replication thread holds is not the
    /// caller's to try.
    func onAnotherThread(_ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread {
            body()
            done.signal()
        }.start()
        done.wait()
    }

    /// A gate with a streaming connection over `output` attached, as the replication thread sets it up.
    fileprivate func attached(
        _ output: RecordingOutput = RecordingOutput()
    ) -> (StreamGate, RecordingOutput, StreamingConnection<RecordingOutput>) {
        let gate = StreamGate()
        let link = StreamingConnection(output, gate: gate, statusInterval: .seconds(10))
        gate.attach(link)
        return (gate, output, link)
    }

    @Test func anAcknowledgementGoesOutFromTheReportingThreadWhenTheConnectionIsFree() throws {
        let (gate, output, link) = attached()
        gate.report(feedback(0x100))
        #expect(output.updates.map(\.flush) == [LSN(0x100)])
        #expect(!woken(gate), "the replication thread was woken for an update already sent")
        // Nothing new for the replication thread to send on its next turn.
        try link.reportIfDue()
        #expect(output.updates.count == 1)
    }

    @Test func whileTheReplicationThreadHoldsTheConnectionItIsWokenAndSendsTheLatest() throws {
        let (gate, output, link) = attached()
        try link.withConnection { _ in
            onAnotherThread {
                gate.report(feedback(0x100))
                gate.report(feedback(0x200))
            }
        }
        #expect(output.updates.isEmpty)
        #expect(woken(gate))
        try link.reportIfDue()
        #expect(output.updates.map(\.flush) == [LSN(0x200)])
    }

    @Test func withoutAnAttachedConnectionOrAfterCloseTheThreadIsWoken() throws {
        let gate = StreamGate()
        let output = RecordingOutput()
        let link = StreamingConnection(output, gate: gate, statusInterval: .seconds(10))
        gate.report(feedback(0x100))
        #expect(woken(gate))
        gate.attach(link)
        link.close()
        gate.report(feedback(0x200))
        #expect(woken(gate))
        #expect(output.updates.isEmpty)
        // The replication thread's own final update still goes (COPY's end is its to send after it).
        try link.reportIfDue(force: true)
        #expect(output.updates.map(\.flush) == [LSN(0x200)])
    }

    @Test func aPartialSendWakesTheThreadToFinishIt() throws {
        let (gate, output, link) = attached()
        output.flushCompletes = false
        gate.report(feedback(0x100))
        #expect(output.updates.count == 1)
        #expect(link.outputPending)
        #expect(woken(gate), "queued output must be flushed by the thread that polls the socket")
        output.flushCompletes = true
        try link.reportIfDue()
        #expect(!link.outputPending)
        #expect(output.updates.count == 1)
    }

    @Test func anUpdateLibpqCouldNotTakeIsLeftToTheReplicationThread() throws {
        let (gate, output, link) = attached()
        output.accepting = false
        gate.report(feedback(0x100))
        #expect(output.updates.isEmpty)
        #expect(woken(gate), "nobody would send the update until the next periodic one")
        output.accepting = true
        try link.reportIfDue()
        #expect(output.updates.map(\.flush) == [LSN(0x100)])
    }

    @Test func aFailedSendLeavesTheUpdateToTheReplicationThread() throws {
        let (gate, output, link) = attached()
        output.failing = true
        gate.report(feedback(0x100))
        #expect(woken(gate))
        // The thread tries again itself, and meets the failure (which ends the stream).
        #expect(throws: PostgresError.self) { try link.reportIfDue() }
    }

    @Test func aReplyThePrimaryAskedForGoesOutEvenWithoutNewFeedback() throws {
        let (gate, output, link) = attached()
        gate.report(feedback(0x100))
        try link.reportIfDue()
        #expect(output.updates.count == 1)
        link.replyRequested()
        try link.reportIfDue()
        #expect(output.updates.map(\.flush) == [LSN(0x100), LSN(0x100)])
    }
}

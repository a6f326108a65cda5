import Foundation
import NIOCore
import NIOEmbedded
import ShipProtocol
import Testing
import WALCore

@testable import Receiver

@Suite struct AckSenderTests {
    func ack(durable: UInt64) -> Ack {
        Ack(timeline: 1, writtenLSN: LSN(durable), durableLSN: LSN(durable), receiverTime: .now())
    }

    /// The spool thread's ack waits in the event loop's task queue while the loop itself acknowledges further
    /// (a synchronous commit it wrote): what reaches the wire must still never go back.
    @Test func anAckQueuedFromAnotherThreadNeverOvertakesWhatTheLoopSentSince() async throws {
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1))
        let acks = AckSender(channel: channel)
        try await channel.eventLoop.submit {
            // Another thread sends 0/10 while the loop is busy: it can only queue it.
            let queued = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                acks.send(self.ack(durable: 0x10))
                queued.signal()
            }
            queued.wait()
            acks.send(self.ack(durable: 0x20))  // on the loop: written at once
        }.get()
        try await channel.eventLoop.submit {}.get()  // the queued send has run

        var durable: [LSN] = []
        while let message = try await channel.readOutbound(as: ShipMessage.self) {
            guard case .ack(let ack) = message else {
                Issue.record("not an ack: \(message.kind)")
                break
            }
            durable.append(ack.durableLSN)
        }
        #expect(durable == [LSN(0x20), LSN(0x20)], "the late 0/10 goes out merged with the 0/20 before it")
    }
}

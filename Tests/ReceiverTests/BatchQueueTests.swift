import Foundation
import Synchronization
import Testing
@testable import Receiver

@Suite struct BatchQueueTests {
    struct Ended: Error {}

    @Test func theEventLoopsPushSaysWhenToPauseAndTheWriterSaysWhenToGoOn() throws {
        let resumed = Mutex(0)
        let queue = BatchQueue<Int>(maxBytes: 100) { resumed.withLock { $0 += 1 } }
        #expect(try queue.pushNow(1, bytes: 60) == false)
        #expect(try queue.pushNow(2, bytes: 60) == true, "at the limit the producer pauses")
        #expect(try queue.pushNow(3, bytes: 10) == true, "frames already read still queue, and still say pause")
        #expect(resumed.withLock { $0 } == 0)
        #expect(try queue.takeAllBlocking() == [1, 2, 3])
        #expect(resumed.withLock { $0 } == 1, "taking the batch lets the paused producer go on")

        #expect(try queue.pushNow(4, bytes: 10) == false)
        #expect(try queue.takeAllBlocking() == [4])
        #expect(resumed.withLock { $0 } == 1, "a producer that never paused is not woken")
    }

    @Test func anAsyncPushWaitsForRoomAndAFinishedQueueRefusesBothPushes() async throws {
        let queue = BatchQueue<Int>(maxBytes: 10)
        _ = try queue.pushNow(1, bytes: 10)
        let pushed = Task { try await queue.push(2, bytes: 5) }
        // The writer takes the first batch on its own thread, which lets the waiting push in.
        let first = try await Task.detached { try queue.takeAllBlocking() }.value
        #expect(first == [1])
        try await pushed.value
        #expect(try queue.takeAllBlocking() == [2])

        queue.finish(Ended())
        #expect(throws: Ended.self) { try queue.pushNow(3, bytes: 1) }
        await #expect(throws: Ended.self) { try await queue.push(3, bytes: 1) }
        #expect(throws: Ended.self) { try queue.takeAllBlocking() }
    }

    @Test func whatWasQueuedBeforeTheEndIsStillTaken() throws {
        let queue = BatchQueue<Int>(maxBytes: 10)
        _ = try queue.pushNow(1, bytes: 1)
        queue.finish(Ended())
        #expect(try queue.takeAllBlocking() == [1])
        #expect(throws: Ended.self) { try queue.takeAllBlocking() }
    }
}

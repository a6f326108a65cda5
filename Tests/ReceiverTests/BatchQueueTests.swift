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

    /// The writer's thread, parked in `takeAllBlocking`; `outcome` is set when it returns or throws.
    final class ParkedWriter: @unchecked Sendable {
        let outcome = Mutex<Result<[Int], any Error>?>(nil)
        let queue: BatchQueue<Int>

        init(_ queue: BatchQueue<Int>) {
            self.queue = queue
            Thread.detachNewThread { [self] in
                let result = Result { try queue.takeAllBlocking() }
                outcome.withLock { $0 = result }
            }
        }

        var finished: Bool { outcome.withLock { $0 != nil } }

        /// Borrows the role as soon as the thread has parked (within a deadline).
        func borrowOnceParked() -> Bool {
            Self.poll { queue.borrowIdleWriter() ? true : nil } ?? false
        }

        func waitForOutcome() -> Result<[Int], any Error>? {
            Self.poll { outcome.withLock { $0 } }
        }

        /// `probe`'s first answer, asked every millisecond for up to 10 s.
        static func poll<T>(_ probe: () -> T?) -> T? {
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                if let answer = probe() { return answer }
                Thread.sleep(forTimeInterval: 0.001)
            }
            return nil
        }
    }

    @Test func theWritersRoleIsLentOnlyWhileItWaitsWithNothingQueued() throws {
        let queue = BatchQueue<Int>(maxBytes: 100)
        #expect(!queue.borrowIdleWriter(), "no writer is parked yet")
        _ = try queue.pushNow(1, bytes: 1)
        let writer = ParkedWriter(queue)
        #expect(try writer.waitForOutcome()?.get() == [1], "the queued item goes to the writer")

        let second = ParkedWriter(queue)
        #expect(second.borrowOnceParked())
        #expect(!queue.borrowIdleWriter(), "lent once at a time")
        // Whatever is queued while the role is lent waits for its return: it comes after the borrowed write.
        _ = try queue.pushNow(2, bytes: 1)
        Thread.sleep(forTimeInterval: 0.05)
        #expect(!second.finished, "the writer stays parked while its role is lent")
        queue.returnWriter()
        #expect(try second.waitForOutcome()?.get() == [2])

        _ = try queue.pushNow(3, bytes: 1)
        let third = ParkedWriter(queue)
        #expect(try third.waitForOutcome()?.get() == [3])
        let fourth = ParkedWriter(queue)
        #expect(fourth.borrowOnceParked())
        queue.returnWriter()
        _ = try queue.pushNow(4, bytes: 1)
        #expect(try fourth.waitForOutcome()?.get() == [4])
        #expect(!queue.borrowIdleWriter(), "something queued and no writer parked: not lent")
    }

    @Test func anEndWhileTheRoleIsLentWaitsForItsReturn() throws {
        let queue = BatchQueue<Int>(maxBytes: 100)
        let writer = ParkedWriter(queue)
        #expect(writer.borrowOnceParked())
        queue.finish(Ended())
        Thread.sleep(forTimeInterval: 0.05)
        #expect(!writer.finished, "the writer's thread is not given up while another thread writes in its role")
        queue.returnWriter()
        #expect(throws: Ended.self) { try writer.waitForOutcome()?.get() }
        #expect(!queue.borrowIdleWriter(), "a finished queue lends nothing")
    }
}

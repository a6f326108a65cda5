import NIOPosix
import Synchronization
import Testing

@testable import Receiver

@Suite struct ThreadPoolDrainTests {
    /// The link's writer must drain its queue although the link ended (and cancelled its workers) while the
    /// system's thread was still busy with the previous link.
    @Test func workSubmittedBeforeTheCallerIsCancelledStillRuns() async throws {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let previousLinkRuns = Mutex(false)
        let previousLinkMayEnd = Mutex(false)
        let previousLink = Task {
            try await pool.runIfActive {
                previousLinkRuns.withLock { $0 = true }
                while !previousLinkMayEnd.withLock({ $0 }) {}
            }
        }
        while !previousLinkRuns.withLock({ $0 }) { await Task.yield() }
        let ran = Mutex(false)
        let link = Task { try await pool.runToCompletion { ran.withLock { $0 = true } } }
        // The link ends before its writer got the thread.
        link.cancel()
        previousLinkMayEnd.withLock { $0 = true }
        try await previousLink.value
        _ = try? await link.value
        #expect(ran.withLock { $0 }, "what the link queued before it ended is written")
        try await pool.shutdownGracefully()
    }
}

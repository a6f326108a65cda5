import NIOPosix

extension NIOThreadPool {
    /// Runs `body` on the pool even when the calling task is cancelled before the pool's thread is free to
    /// start it. A link's writer must drain what its link queued (a link's start in the mode history among it)
    /// although the link may end, and cancel its workers, while the thread still finishes the previous link's
    /// work; `runIfActive` alone would drop the body unstarted.
    func runToCompletion<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await Task { try await self.runIfActive(body) }.value
    }
}

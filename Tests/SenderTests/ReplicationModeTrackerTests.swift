import ShipProtocol
import Testing
import WALCore

@testable import Sender

@Suite struct ReplicationModeTrackerTests {
    func observation(
        _ syncState: String?, commit: String? = "on", names: String? = "walship", degraded: Bool = false,
        exposure: UInt64 = 0, lsn: UInt64 = 0x300_0000, at: Int64 = 1_000_000
    ) -> ReplicationModeTracker.Observation {
        .init(
            syncState: syncState, synchronousCommit: commit, synchronousStandbyNames: names, degraded: degraded,
            exposureBytes: exposure, lsn: LSN(lsn), at: PostgresTimestamp(rawValue: at))
    }

    @Test func modesFollowWhatThePrimaryReports() {
        #expect(ReplicationMode.observed(syncState: "sync", synchronousCommit: "on", degraded: false) == .sync)
        #expect(ReplicationMode.observed(syncState: "sync", synchronousCommit: "remote_apply", degraded: false) == .sync)
        // Commits that do not wait by default are not synchronous, whatever sync_state says.
        #expect(ReplicationMode.observed(syncState: "sync", synchronousCommit: "local", degraded: false) == .async)
        #expect(ReplicationMode.observed(syncState: "sync", synchronousCommit: "off", degraded: false) == .async)
        #expect(ReplicationMode.observed(syncState: "quorum", synchronousCommit: "on", degraded: false) == .quorum)
        #expect(ReplicationMode.observed(syncState: "potential", synchronousCommit: "on", degraded: false) == .potential)
        #expect(ReplicationMode.observed(syncState: "async", synchronousCommit: "on", degraded: false) == .async)
        // NULL (no pg_monitor) is unknown, never sync.
        #expect(ReplicationMode.observed(syncState: nil, synchronousCommit: "on", degraded: false) == .unknown)
        #expect(ReplicationMode.observed(syncState: "sync", synchronousCommit: "on", degraded: true) == .degraded)
        for mode in ReplicationMode.allCases { #expect(ReplicationMode(code: mode.code) == mode) }
    }

    @Test func onlyChangesAreKeptAndANewLinkHearsTheCurrentModeLast() {
        var tracker = ReplicationModeTracker(synchronousRequested: true, applicationName: "walship")
        #expect(tracker.observed(observation("sync", at: 1))?.mode == .sync)
        #expect(tracker.observed(observation("sync", at: 2)) == nil)
        let first = tracker.linkStarted()
        #expect(first.map(\.mode) == [.sync])
        #expect(tracker.takeUnsent().isEmpty)

        // While the link is down the mode changes twice; the next link hears both, in order.
        #expect(tracker.observed(observation("async", names: "other", at: 3))?.mode == .async)
        #expect(tracker.observed(observation("sync", at: 4))?.mode == .sync)
        let next = tracker.linkStarted()
        #expect(next.map(\.mode) == [.async, .sync])
        #expect(next[0].detail.contains("does not name walship"))
        #expect(next.map(\.observedAt.rawValue) == [3, 4])

        // A link after a quiet spell still begins with where things stand.
        #expect(tracker.linkStarted().map(\.mode) == [.sync])
        #expect(tracker.since == PostgresTimestamp(rawValue: 4))
    }

    @Test func syncNotHonouredIsTimedFromItsFirstObservation() {
        var tracker = ReplicationModeTracker(synchronousRequested: true, applicationName: "walship")
        _ = tracker.observed(observation("sync", at: 1))
        #expect(tracker.notHonouredSince == nil)
        _ = tracker.observed(observation("potential", at: 5))
        _ = tracker.observed(observation("async", at: 9))
        #expect(tracker.notHonouredSince == PostgresTimestamp(rawValue: 5))
        _ = tracker.observed(observation(nil, at: 11))
        #expect(tracker.notHonouredSince == PostgresTimestamp(rawValue: 5), "unknown is not honoured either")
        // Degraded is the policy the DBA chose, watched by the rpo_exposure alert instead.
        _ = tracker.observed(observation("sync", degraded: true, exposure: 10, at: 12))
        #expect(tracker.notHonouredSince == nil)
        _ = tracker.observed(observation("sync", at: 13))
        #expect(tracker.notHonouredSince == nil)

        var asynchronous = ReplicationModeTracker(synchronousRequested: false, applicationName: "walship")
        _ = asynchronous.observed(observation("async", at: 1))
        #expect(asynchronous.notHonouredSince == nil)
    }

    @Test func aGrowingExposureIsKeptButNotAnUnchangedOne() {
        var tracker = ReplicationModeTracker(synchronousRequested: true, applicationName: "walship")
        _ = tracker.observed(observation("sync", at: 1))
        #expect(tracker.observed(observation("sync", degraded: true, exposure: 100, at: 2))?.exposureBytes == 100)
        #expect(tracker.observed(observation("sync", degraded: true, exposure: 100, at: 3)) == nil)
        #expect(tracker.observed(observation("sync", degraded: true, exposure: 500, at: 4))?.exposureBytes == 500)
        #expect(tracker.since == PostgresTimestamp(rawValue: 2), "the episode began with its first observation")
    }

    @Test func unsentChangesAreBounded() {
        var tracker = ReplicationModeTracker(synchronousRequested: true, applicationName: "walship")
        for i in 0..<(ReplicationModeTracker.maxUnsent * 2) {
            _ = tracker.observed(observation(i % 2 == 0 ? "sync" : "async", at: Int64(i)))
        }
        let sent = tracker.linkStarted()
        #expect(sent.count == ReplicationModeTracker.maxUnsent)
        #expect(sent.last == tracker.current, "the newest change survives")
    }
}

import Spool
import Testing
import WALCore

@testable import Operations

@Suite struct SwitchoverPlanTests {
    let flushed = LSN("0/9000000")!

    func levels(_ checks: [CheckResult]) -> [String: CheckResult.Level] {
        Dictionary(checks.map { ($0.name, $0.level) }) { $1 }
    }

    @Test func theRoleFollowsTheServer() {
        #expect(SwitchoverPlan.role(inRecovery: false) == .demote)
        #expect(SwitchoverPlan.role(inRecovery: true) == .promote)
    }

    @Test func thePrimarysSiteNeedsItsSenderSynchronousAndClose() {
        let close = SwitchoverPlan.SenderRow(syncState: "sync", durable: LSN("0/8FFFF00")!, replayed: LSN("0/8F00000")!)
        let ok = SwitchoverPlan.demoteChecks(
            sender: close, flushed: flushed, applicationName: "site_a", allowAsync: false, maxLag: 16 << 20)
        #expect(ok.allSatisfy { $0.level == .ok }, "\(ok.map(\.line))")

        let none = SwitchoverPlan.demoteChecks(
            sender: nil, flushed: flushed, applicationName: "site_a", allowAsync: false, maxLag: 16 << 20)
        #expect(none.map(\.level) == [.failure])
        #expect(none[0].line.contains("application_name site_a"))

        var async = close
        async.syncState = "async"
        #expect(
            levels(
                SwitchoverPlan.demoteChecks(
                    sender: async, flushed: flushed, applicationName: "a", allowAsync: false, maxLag: 1 << 30))[
                    "synchronous"] == .failure)
        #expect(
            levels(
                SwitchoverPlan.demoteChecks(
                    sender: async, flushed: flushed, applicationName: "a", allowAsync: true, maxLag: 1 << 30))[
                    "synchronous"] == .warning)

        let behind = SwitchoverPlan.SenderRow(syncState: "sync", durable: LSN("0/8FFFF00")!, replayed: LSN("0/1000000")!)
        let lagging = levels(
            SwitchoverPlan.demoteChecks(
                sender: behind, flushed: flushed, applicationName: "a", allowAsync: false, maxLag: 16 << 20))
        #expect(lagging["peer durable"] == .ok && lagging["peer replayed"] == .failure)

        let unknown = SwitchoverPlan.SenderRow(syncState: "sync", durable: LSN("0/8FFFF00")!, replayed: nil)
        #expect(
            levels(
                SwitchoverPlan.demoteChecks(
                    sender: unknown, flushed: flushed, applicationName: "a", allowAsync: false, maxLag: 16 << 20))[
                    "peer replayed"] == .failure)
    }

    @Test func theStandbysSiteNeedsTheShutdownCheckpointLastInItsSpool() {
        let checkpoint = WALRecordMark(start: LSN("0/5000028")!, end: LSN("0/50000A0")!, isShutdownCheckpoint: true)
        let clean = SpoolTail(timeline: 1, end: checkpoint.end, lastRecord: checkpoint)
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: false, tail: clean, expected: nil)).values.allSatisfy { $0 == .ok })
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: false, tail: clean, expected: checkpoint.start)).values.allSatisfy {
                $0 == .ok
            })
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: true, tail: clean, expected: nil))["replaying"] == .failure)
        // Another shutdown checkpoint than the primary's: its last WAL has not arrived.
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: false, tail: clean, expected: LSN("0/6000028")!))["primary stopped"]
                == .failure)
        // A primary still running leaves another record last.
        let running = SpoolTail(
            timeline: 1, end: LSN("0/5000100")!,
            lastRecord: WALRecordMark(start: LSN("0/50000A0")!, end: LSN("0/5000100")!, isShutdownCheckpoint: false))
        let refused = SwitchoverPlan.promoteChecks(replayPaused: false, tail: running, expected: nil)
        #expect(levels(refused)["primary stopped"] == .failure)
        #expect(refused.last!.line.contains("run walship switchover at the primary's site first"))
        // A checkpoint followed by WAL that has not been read whole is no proof either.
        let beyond = SpoolTail(timeline: 1, end: LSN("0/5000200")!, lastRecord: checkpoint)
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: false, tail: beyond, expected: nil))["primary stopped"] == .failure)
        #expect(
            levels(SwitchoverPlan.promoteChecks(replayPaused: false, tail: nil, expected: nil))["primary stopped"] == .failure)
    }

    @Test func synchronousStandbyNamesQuotesTheSendersName() {
        #expect(SwitchoverPlan.synchronousStandbyNames("site_b") == "\"site_b\"")
        #expect(SwitchoverPlan.synchronousStandbyNames("a\"b") == "\"a\"\"b\"")
    }
}

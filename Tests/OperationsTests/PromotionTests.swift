import Foundation
import StatusModel
import Testing
import WALCore

@testable import Operations

@Suite struct PromotionTests {
    let spool = PromotionFacts.MatchingSpool(
        systemDirectory: "/spool/7", standbyListen: "127.0.0.1:7010", fencedAt: nil, fenceUnwritable: nil)

    func facts(
        inRecovery: Bool = true, system: UInt64? = 7, primaryConninfo: String = "host=127.0.0.1 port=7010 user=r",
        restoreCommand: String = "", spool: PromotionFacts.SpoolSide? = nil
    ) -> PromotionFacts {
        PromotionFacts(
            inRecovery: inRecovery, systemIdentifier: system, primaryConninfo: primaryConninfo, restoreCommand: restoreCommand,
            hostName: "dr-host", spool: spool)
    }

    func standby(_ facts: PromotionFacts, force: Bool = false) -> PreconditionOutcome {
        PromotionPrecondition.evaluate(PromotionPrecondition.standby(dataDirectory: "/pg/dr"), facts: facts, force: force)
    }

    func spoolSide(_ facts: PromotionFacts, force: Bool = false) -> PreconditionOutcome {
        PromotionPrecondition.evaluate(PromotionPrecondition.spool, facts: facts, force: force)
    }

    @Test func aStandbyInRecoveryPasses() {
        let outcome = standby(facts())
        #expect(outcome.refusal == nil)
        #expect(outcome.checks == [.init(name: "standby in recovery", passed: true, detail: "pg_is_in_recovery() is true")])
    }

    @Test func aServerNotInRecoveryIsRefusedEvenWithForce() {
        let outcome = standby(facts(inRecovery: false), force: true)
        #expect(
            outcome.refusal
                == "the server of /pg/dr is not a standby: it is already promoted (or a primary); nothing to do")
        #expect(outcome.checks.map(\.passed) == [false])
    }

    @Test func anUnreadableSystemIdentifierStopsWithoutACheck() {
        let outcome = standby(facts(system: nil))
        #expect(outcome.refusal == "cannot read the standby's system identifier")
        #expect(outcome.checks.map(\.name) == ["standby in recovery"])
    }

    @Test func withoutASpoolThePromotionGoesOnWithAWarning() {
        let outcome = spoolSide(facts(spool: .notGiven))
        #expect(outcome.refusal == nil)
        #expect(
            outcome.checks == [
                .init(
                    name: "spool given", passed: false,
                    detail: "without --spool the RPO cannot be measured and the receiver cannot be fenced")
            ])
        #expect(
            outcome.warnings == [
                "warning: no --spool: waiting only for what the standby has received; no RPO figures, no fence"
            ])
        #expect(PromotionStep.plan(spoolGiven: false) == [.replayReceived, .promote])
    }

    @Test func aReplicaOfTheSpoolPassesAndIsFencedBeforePromotion() {
        let outcome = spoolSide(facts(spool: .matching(spool)))
        #expect(outcome.refusal == nil)
        #expect(outcome.warnings.isEmpty)
        #expect(outcome.checks.map(\.name) == ["system matches the spool", "replicates from walship"])
        #expect(outcome.checks.allSatisfy { $0.passed })
        #expect(PromotionStep.plan(spoolGiven: true) == [.replaySpool, .fence, .promote])
    }

    @Test func anotherSystemsSpoolIsRefusedEvenWithForce() {
        let outcome = spoolSide(facts(spool: .otherSystem(9)), force: true)
        #expect(
            outcome.refusal
                == "the standby is database system 7 but the spool holds system 9: it is not a replica of this spool")
        #expect(
            outcome.checks == [
                .init(name: "system matches the spool", passed: false, detail: "standby is system 7, the spool's is 9")
            ])
    }

    @Test func aStandbyOfSomethingElseIsRefusedUnlessForced() {
        let elsewhere = facts(primaryConninfo: "host=10.1.1.1 port=5432", spool: .matching(spool))
        let refused = spoolSide(elsewhere)
        #expect(refused.refusal?.hasPrefix("the standby does not replicate from this walship receiver") == true)
        #expect(refused.checks.last?.name == "replicates from walship")
        #expect(refused.checks.last?.passed == false)
        let forced = spoolSide(elsewhere, force: true)
        #expect(forced.refusal == nil)
        #expect(forced.checks.map(\.passed) == [true, false])
        // An archive-fed standby replicates from the spool through restore_command.
        let archiveFed = facts(
            primaryConninfo: "", restoreCommand: "/usr/local/bin/walship restore-wal --spool /spool %f %p",
            spool: .matching(spool))
        #expect(spoolSide(archiveFed).checks.allSatisfy { $0.passed })
    }

    @Test func anEarlierFenceOrAnUnwritableOneRefusesUnlessForced() {
        var fenced = spool
        fenced.fencedAt = Date(timeIntervalSince1970: 1_700_000_000)
        let refused = spoolSide(facts(spool: .matching(fenced)))
        #expect(refused.refusal?.contains("already promoted at 2023-11-14T22:13:20") == true)
        #expect(refused.refusal?.contains("/spool/7/") == true)
        #expect(refused.checks.last?.name == "not fenced before")

        var unwritable = spool
        unwritable.fenceUnwritable = "no write permission in /spool/7"
        let stopped = spoolSide(facts(spool: .matching(unwritable)))
        #expect(
            stopped.refusal
                == "cannot write the fence into /spool/7: no write permission in /spool/7 (hint: run walship promote as the spool's owner or root; --force promotes without fencing)"
        )
        var both = fenced
        both.fenceUnwritable = unwritable.fenceUnwritable
        let forced = spoolSide(facts(spool: .matching(both)), force: true)
        #expect(forced.refusal == nil)
        #expect(
            forced.checks.map(\.name) == [
                "system matches the spool", "replicates from walship", "not fenced before", "fence writable",
            ])
    }

    /// After a switchover back, the spool follows a timeline descending from the one its fence recorded: the fence
    /// has been passed by its own lineage, and the next promotion of this site is not a second one of the same kind.
    @Test func aFenceTheSpoolHasFollowedPastDoesNotRefuse() {
        var passed = spool
        passed.fencedAt = Date(timeIntervalSince1970: 1_700_000_000)
        passed.fencedTimeline = 2
        passed.spoolTimeline = 3
        let outcome = spoolSide(facts(spool: .matching(passed)))
        #expect(outcome.refusal == nil)
        #expect(outcome.checks.last?.name == "not fenced before")
        #expect(outcome.checks.last?.passed == true)
        #expect(outcome.checks.last?.detail.contains("followed timeline 3") == true)
        // Still on the promoted timeline (or an older one): refused as before.
        passed.spoolTimeline = 2
        #expect(spoolSide(facts(spool: .matching(passed))).refusal?.contains("already promoted") == true)
    }

    /// A switchover's proof that the old primary stopped stands for the receiver's readiness.
    @Test func aProofThatThePrimaryStoppedStandsForReadiness() {
        var proven = spool
        proven.primaryStoppedProof = "the spool ends with its shutdown checkpoint"
        let outcome = spoolSide(facts(spool: .matching(proven)))
        #expect(outcome.refusal == nil)
        #expect(outcome.checks.contains { $0.name == "primary lost" && $0.passed && $0.detail.contains("shutdown checkpoint") })
    }

    @Test func anUnreadableFenceStopsEvenWithForceAfterTheChecksBeforeIt() {
        var unreadable = spool
        unreadable.fenceUnreadable = "FENCED: invalid JSON"
        let outcome = spoolSide(facts(primaryConninfo: "host=10.1.1.1", spool: .matching(unreadable)), force: true)
        #expect(outcome.refusal == "FENCED: invalid JSON")
        #expect(outcome.checks.map(\.name) == ["system matches the spool", "replicates from walship"])
    }

    @Test func replayShortOfTheSpoolRefusesUnlessForced() {
        let reached = replayVerdict(replayed: LSN(0x300_0000), goal: LSN(0x300_0000), timeoutSeconds: 120, force: false)
        #expect(reached.refusal == nil)
        #expect(
            reached.checks == [
                .init(name: "replayed all received WAL", passed: true, detail: "replayed 0/3000000 ≥ spool end 0/3000000")
            ])
        let short = replayVerdict(replayed: LSN(0x300_0000), goal: LSN(0x310_0000), timeoutSeconds: 120, force: false)
        #expect(short.checks.first?.detail == "replayed only 0/3000000 of 0/3100000 within 120 s")
        #expect(short.refusal?.hasPrefix("the standby replayed up to 0/3000000 but the spool holds WAL up to 0/3100000") == true)
        let forced = replayVerdict(replayed: LSN(0x300_0000), goal: LSN(0x310_0000), timeoutSeconds: 120, force: true)
        #expect(forced.refusal == nil)
        #expect(forced.warnings.count == 1)
        #expect(forced.warnings.first?.hasSuffix("of received WAL not replayed (--force)") == true)
    }

    @Test func aStoppedPromotionIsRefusedWhenACheckFailedElseFailed() {
        var refused = PromotionReport(kind: "promote", host: "h", startedAt: Date(), dataDirectory: "/pg/dr")
        refused.check("standby in recovery", false, "not in recovery")
        refused.close(failure: "not a standby")
        #expect(refused.outcome == "refused")
        #expect(refused.checks.last == .init(name: "completed", passed: false, detail: "not a standby"))
        #expect(refused.finishedAt != nil)

        var failed = PromotionReport(kind: "promote", host: "h", startedAt: Date(), dataDirectory: "/pg/dr")
        failed.check("standby in recovery", true, "ok")
        failed.close(failure: "connection lost")
        #expect(failed.outcome == "failed")

        var promoted = PromotionReport(kind: "promote", host: "h", startedAt: Date(), dataDirectory: "/pg/dr")
        promoted.outcome = "promoted"
        promoted.close(failure: nil)
        #expect(promoted.outcome == "promoted")
        #expect(promoted.checks.isEmpty)
    }

    @Test func summaryAndHeadline() {
        var report = PromotionReport(kind: "promote", host: "h", startedAt: Date(), dataDirectory: "/pg/dr")
        report.outcome = "promoted"
        report.promotedTimeline = 3
        report.lastReplayedLSN = "0/3000000"
        report.rpo = .init(bytes: 0, seconds: 0, basis: "")
        report.rtoSeconds = 4.2
        report.check("spool given", false, "no spool")
        // Replay reaching all the receiver acknowledged does not prove every commit the primary acknowledged.
        #expect(
            report.summary
                == """

                == promotion promoted
                promoted timeline:        3
                last replayed:            0/3000000, last commit none replayed
                RPO (acknowledged lost):  0 B, 0.0 s  (of what the receiver acknowledged)
                RTO (to first write):     4.2 s
                check failed: spool given: no spool
                """)
        report.modeAtLoss = "sync"
        report.everyAcknowledgedCommitPresent = true
        #expect(report.summary.contains("RPO (acknowledged lost):  0 B, 0.0 s  (every acknowledged commit is present)"))
        #expect(report.summary.contains("mode at the loss:         sync"))
        report.everyAcknowledgedCommitPresent = false
        report.loss = "commits the primary acknowledged may be missing"
        #expect(!report.summary.contains("every acknowledged commit is present"))
        #expect(report.summary.contains("acknowledged commits:     commits the primary acknowledged may be missing"))
        #expect(report.headline(failure: nil) == "promoted /pg/dr to timeline 3: RPO 0 B / 0.0 s, RTO 4.2 s")
        report.outcome = "refused"
        #expect(report.headline(failure: "no") == "promotion of /pg/dr refused: no")
        report.kind = "drill"
        #expect(report.headline(failure: nil) == "disaster-recovery drill passed: RPO 0 B / 0.0 s, RTO 4.2 s")
        #expect(report.headline(failure: "a sanity check failed") == "disaster-recovery drill failed: a sanity check failed")
    }

    @Test func theNoticeCarriesTheReportAndItsFigures() {
        var report = PromotionReport(kind: "drill", host: "h", startedAt: Date(), dataDirectory: "/d")
        #expect(conclusionDetails(report, reportPath: nil) == ["report": "", "rpo_bytes": "", "rto_seconds": ""])
        report.rpo = .init(bytes: 8192, seconds: 0.5, basis: "")
        report.rtoSeconds = 3.5
        #expect(
            conclusionDetails(report, reportPath: "/r.json") == [
                "report": "/r.json", "rpo_bytes": "8192", "rto_seconds": "3.5",
            ])
    }

    @Test func primaryConninfoReachesTheStandbyEndpoint() {
        #expect(primaryConninfo("host=127.0.0.1 port=7010", reaches: "127.0.0.1:7010", localNames: []))
        #expect(!primaryConninfo("host=127.0.0.1 port=7011", reaches: "127.0.0.1:7010", localNames: []))
        #expect(!primaryConninfo("host=127.0.0.1 port=7010", reaches: nil, localNames: []))
    }
}

/// A standby reached over SQL alone (`--standby` without `--pgdata`), on this host or another.
@Suite struct RemotePromotionTests {
    let spool = PromotionFacts.MatchingSpool(
        systemDirectory: "/spool/7", standbyListen: "0.0.0.0:7010", fencedAt: nil, fenceUnwritable: nil)

    func facts(
        primaryConninfo: String = "host=dr-receiver port=7010 user=r", restoreCommand: String = "", here: Bool = false,
        unreadable: [String] = [], mayPromote: Bool = true
    ) -> PromotionFacts {
        var facts = PromotionFacts(
            inRecovery: true, systemIdentifier: 7, primaryConninfo: primaryConninfo, restoreCommand: restoreCommand,
            hostName: "dr-receiver", spool: .matching(spool))
        facts.standbyOnThisHost = here
        facts.localNames = ["dr-receiver.example.org", "10.0.0.5"]
        facts.unreadableSettings = unreadable
        facts.role = "operator"
        facts.mayPromote = mayPromote
        facts.standbyOption = "--standby"
        return facts
    }

    func standby(_ facts: PromotionFacts, force: Bool = false) -> PreconditionOutcome {
        PromotionPrecondition.evaluate(
            PromotionPrecondition.standby(conninfo: "host=dr-db port=5432 user=operator"), facts: facts, force: force)
    }

    func spoolSide(_ facts: PromotionFacts, force: Bool = false) -> PreconditionOutcome {
        PromotionPrecondition.evaluate(PromotionPrecondition.spool, facts: facts, force: force)
    }

    @Test func theRefusalNamesTheServerByItsConnection() {
        var promoted = facts()
        promoted.inRecovery = false
        #expect(
            standby(promoted, force: true).refusal
                == "the server at host=dr-db port=5432 user=operator is not a standby: it is already promoted (or a primary); nothing to do"
        )
        #expect(standby(facts()).refusal == nil)
        #expect(standby(facts()).checks.map(\.name) == ["standby in recovery"], "a role that may promote adds no line")
    }

    /// Nothing is fenced for a role that could not promote: the refusal comes first, and --force cannot help.
    @Test func aRoleThatMayNotRunPgPromoteIsRefusedEvenWithForce() {
        let outcome = standby(facts(mayPromote: false), force: true)
        #expect(
            outcome.refusal
                == "the role operator may not run pg_promote, so the server at host=dr-db port=5432 user=operator cannot be promoted over this connection; nothing was changed (hint: connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO operator)"
        )
        #expect(
            outcome.checks.last
                == .init(name: "may promote", passed: false, detail: "the role operator may not execute pg_promote"))
        // The same check guards a promotion through a data directory.
        var local = facts(mayPromote: false)
        local.standbyOption = "--pgdata"
        let refused = PromotionPrecondition.evaluate(
            PromotionPrecondition.standby(dataDirectory: "/pg/dr"), facts: local, force: true)
        #expect(refused.refusal?.contains("so the server of /pg/dr cannot be promoted") == true)
    }

    @Test func aStandbyElsewhereMustNameThisHostNotItsOwnLoopback() {
        #expect(spoolSide(facts()).checks.allSatisfy { $0.passed })
        #expect(spoolSide(facts(primaryConninfo: "host=10.0.0.5 port=7010")).refusal == nil)
        #expect(spoolSide(facts(primaryConninfo: "host=dr-receiver.example.org port=7010")).refusal == nil)
        let ownLoopback = spoolSide(facts(primaryConninfo: "host=127.0.0.1 port=7010"))
        #expect(
            ownLoopback.refusal?.hasPrefix(
                "the standby does not replicate from this walship receiver: its primary_conninfo does not name the standby endpoint 0.0.0.0:7010"
            )
                == true)
        #expect(ownLoopback.refusal?.contains("(hint: check --standby and --spool; --force promotes anyway)") == true)
        #expect(spoolSide(facts(primaryConninfo: "host=primary.example port=7010")).refusal != nil)
        // On this host, loopback leads to the receiver as it does for --pgdata.
        #expect(spoolSide(facts(primaryConninfo: "host=127.0.0.1 port=7010", here: true)).refusal == nil)
    }

    @Test func anUnreadablePrimaryConninfoSaysWhichPrivilegeIsMissing() {
        let hidden = facts(primaryConninfo: "", unreadable: ["primary_conninfo"])
        let refused = spoolSide(hidden)
        #expect(
            refused.refusal
                == "cannot tell whether the standby replicates from this walship receiver: the role operator may not read its primary_conninfo (hint: connect as a superuser, or GRANT pg_read_all_settings TO operator; --force promotes without this check)"
        )
        #expect(
            refused.checks.last
                == .init(
                    name: "replicates from walship", passed: false,
                    detail: "the role operator may not read primary_conninfo (superuser or pg_read_all_settings needed)"))
        let forced = spoolSide(hidden, force: true)
        #expect(forced.refusal == nil)
        #expect(forced.checks.map(\.passed) == [true, false])
        // restore_command is readable by any role: a spool-fed standby proves itself without the privilege.
        let archiveFed = facts(
            primaryConninfo: "", restoreCommand: "walship restore-wal --spool /spool %f %p", unreadable: ["primary_conninfo"])
        #expect(spoolSide(archiveFed).checks.allSatisfy { $0.passed })
    }

    @Test func whereTheStandbyRuns() {
        let here = ThisHost(names: ["dr-receiver"], addresses: ["127.0.0.1", "::1", "10.0.0.5", "fe80::1"])
        #expect(here.runs(serverAddress: nil), "a Unix-domain socket")
        #expect(here.runs(serverAddress: "127.0.0.1") && here.runs(serverAddress: "::1"))
        #expect(here.runs(serverAddress: "10.0.0.5") && here.runs(serverAddress: "::ffff:10.0.0.5"))
        #expect(!here.runs(serverAddress: "10.0.0.7"))
        let names = here.namesSeenFromElsewhere(
            resolving: ["db-alias", "elsewhere", "localhost", "/var/run/postgresql"],
            resolve: { ["db-alias": ["10.0.0.5"], "elsewhere": ["10.0.0.7"], "localhost": ["127.0.0.1"]][$0] ?? [] })
        #expect(names == ["dr-receiver", "10.0.0.5", "fe80::1", "db-alias"])
        #expect(conninfoHosts("host=a,b port=1,2") == ["a", "b"])
        #expect(conninfoHosts("hostaddr=10.0.0.7") == ["10.0.0.7"])
        #expect(conninfoHosts("port=5432").isEmpty)
    }

    /// Without a data directory the report leaves the key out (as for every value it does not have) and names the
    /// standby by its connection.
    @Test func theReportOfARemoteStandbyHasNoDataDirectory() throws {
        var report = PromotionReport(
            kind: "promote", host: "dr-receiver", startedAt: Date(timeIntervalSince1970: 1_800_000_000), dataDirectory: nil)
        report.standby = "host=dr-db port=5432 user=operator"
        report.outcome = "promoted"
        report.promotedTimeline = 2
        let json = try #require(
            try JSONSerialization.jsonObject(with: StatusDocument.encoder().encode(report)) as? [String: Any])
        #expect(json["dataDirectory"] == nil)
        #expect(json["standby"] as? String == "host=dr-db port=5432 user=operator")
        #expect(!report.markdown.contains("Data directory"))
        #expect(report.markdown.contains("| Standby | host=dr-db port=5432 user=operator |"))
        #expect(
            report.headline(failure: nil)
                == "promoted the standby at host=dr-db port=5432 user=operator to timeline 2: RPO not measured, RTO ?")
        let decoded = try StatusDocument.decoder().decode(PromotionReport.self, from: StatusDocument.encoder().encode(report))
        #expect(decoded == report)
    }
}

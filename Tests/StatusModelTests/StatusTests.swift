import Foundation
import StatusTestSupport
import Testing

@testable import StatusModel

@Suite struct StatusDocumentTests {
    @Test func roundTripsThroughJSON() throws {
        let document = sampleReceiver()
        let data = try StatusDocument.encoder().encode(document)
        let decoded = try StatusDocument.decoder().decode(StatusDocument.self, from: data)
        #expect(decoded == document)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains(#""schemaVersion" : 1"#))
        #expect(text.contains(#""freePercent" : 25"#))
    }

    @Test func lastStagePrefersReplayed() {
        var document = sampleReceiver()
        #expect(document.systems[0].lastStage?.name == "durable")
        document.systems[0].chain[4] = .init(name: "replayed", lsn: "0/4000000", bytesBehind: 1 << 20, secondsBehind: 3)
        #expect(document.systems[0].lastStage?.name == "replayed")
    }

    @Test func rejectsGarbage() {
        #expect(throws: (any Error).self) { try StatusDocument.decoder().decode(StatusDocument.self, from: Data("{}".utf8)) }
        #expect(throws: (any Error).self) { try StatusDocument.decoder().decode(StatusDocument.self, from: Data("<html>".utf8)) }
    }

    /// The fence's lineage fields reach /status and the FENCED line of `walship status`; a document from a receiver
    /// older than them still decodes, and its line reads as before.
    @Test func theFenceShowsItsLineage() throws {
        var document = sampleReceiver()
        let promotedAt = Date(timeIntervalSince1970: 1_800_000_000)
        document.systems[0].fence = .init(
            promotedAt: promotedAt, promotedTimeline: 2, replayedLSN: "0/3000148", parentTimeline: 1,
            switchPoint: "0/30001C0", lineageRecorded: true)
        let data = try StatusDocument.encoder().encode(document)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let encoded = try #require(((json["systems"] as? [[String: Any]])?.first?["fence"]) as? [String: Any])
        #expect(encoded["parentTimeline"] as? Int == 1 && encoded["switchPoint"] as? String == "0/30001C0", "\(encoded)")
        #expect(encoded["lineageRecorded"] as? Bool == true)
        #expect(encoded["timelineHistory"] == nil)
        #expect(try StatusDocument.decoder().decode(StatusDocument.self, from: data) == document)

        func fenceLine(_ document: StatusDocument) -> String? {
            let verdict = HealthCheck.evaluate(document, thresholds: .init(), now: document.generatedAt)
            return StatusTable.render(document, verdict: verdict, now: document.generatedAt).split(separator: "\n")
                .first { $0.contains("FENCED") }.map(String.init)
        }
        #expect(
            fenceLine(document)
                == "  FENCED: the DR replica was promoted at 2027-01-15T08:00:00.000Z to timeline 2 (from timeline 1 at 0/30001C0); the old primary's WAL is refused; WAL and backups proven to descend from the promoted timeline pass"
        )
        document.systems[0].fence?.lineageRecorded = false
        document.systems[0].fence?.parentTimeline = nil
        document.systems[0].fence?.switchPoint = nil
        #expect(
            fenceLine(document)
                == "  FENCED: the DR replica was promoted at 2027-01-15T08:00:00.000Z to timeline 2; the old primary's WAL is refused, and the new primary's too: the fence records no promoted timeline history"
        )

        // An older receiver's document: no lineage fields.
        var older = json
        var systems = try #require(older["systems"] as? [[String: Any]])
        systems[0]["fence"] = ["promotedAt": "2027-01-15T08:00:00Z", "promotedTimeline": 2, "replayedLSN": "0/3000148"]
        older["systems"] = systems
        let decoded = try StatusDocument.decoder().decode(
            StatusDocument.self, from: JSONSerialization.data(withJSONObject: older))
        let fence = try #require(decoded.systems[0].fence)
        #expect(fence.parentTimeline == nil && fence.switchPoint == nil && fence.lineageRecorded == nil)
        #expect(
            fenceLine(decoded)
                == "  FENCED: the DR replica was promoted at 2027-01-15T08:00:00.000Z to timeline 2; the old primary's WAL is refused"
        )
    }

    @Test func tableShowsTheChain() {
        let document = sampleReceiver(durableBehindBytes: 2048, seconds: 1.5)
        let verdict = HealthCheck.evaluate(document, thresholds: .init(), now: document.generatedAt)
        let text = StatusTable.render(document, verdict: verdict, now: document.generatedAt)
        #expect(text.contains("durable"))
        #expect(text.contains("2.0 kB"))
        #expect(text.contains("1.5 s"))
        #expect(text.hasSuffix(verdict.summary))
    }

    @Test func theArchiveLineSaysWhatRetentionDeletedAndWhatTheBucketKept() {
        var document = sampleReceiver()
        let now = document.generatedAt
        let render = { (document: StatusDocument) in
            StatusTable.render(document, verdict: HealthCheck.evaluate(document, thresholds: .init(), now: now), now: now)
        }
        #expect(render(document).contains("; retention deleted 12"))
        #expect(!render(document).contains("older versions"))
        document.systems[0].archive?.retentionDeleteMarkers = 5
        document.systems[0].archive?.retentionRefusedObjects = 2
        #expect(
            render(document).contains("; retention deleted 12 (5 kept by the bucket as older versions), 2 refused (object lock?)")
        )
    }
}

@Suite struct HealthCheckTests {
    let thresholds = StatusThresholds(
        warningLagSeconds: 10, criticalLagSeconds: 100, warningLagBytes: 1000, criticalLagBytes: 100_000)

    func code(_ document: StatusDocument) -> HealthCheck.Code {
        HealthCheck.evaluate(document, thresholds: thresholds, now: document.generatedAt).code
    }

    @Test func exitCodesFollowNagios() {
        #expect(HealthCheck.Code.ok.rawValue == 0)
        #expect(HealthCheck.Code.warning.rawValue == 1)
        #expect(HealthCheck.Code.critical.rawValue == 2)
        #expect(HealthCheck.Code.unknown.rawValue == 3)
    }

    @Test func verdicts() {
        #expect(code(sampleReceiver()) == .ok)
        #expect(code(sampleReceiver(seconds: 11)) == .warning)
        #expect(code(sampleReceiver(durableBehindBytes: 5000)) == .warning)
        #expect(code(sampleReceiver(seconds: 101)) == .critical)
        #expect(code(sampleReceiver(durableBehindBytes: 200_000)) == .critical)
        #expect(code(sampleReceiver(connected: false)) == .critical)
        let alert = StatusDocument.ActiveAlert(
            condition: "spool_free", severity: "critical", system: nil, since: Date(), message: "full")
        #expect(code(sampleReceiver(alerts: [alert])) == .critical)
        var empty = sampleReceiver()
        empty.systems = []
        #expect(code(empty) == .unknown)
        #expect(HealthCheck.unreadable("down").summary == "UNKNOWN: down")
    }

    @Test func criticalOutranksUnknownOutranksWarning() {
        #expect([HealthCheck.Code.warning, .unknown].max() == .unknown)
        #expect([HealthCheck.Code.unknown, .critical].max() == .critical)
    }

    @Test func senderNotStreamingIsCritical() {
        var document = sampleReceiver()
        document.role = "sender"
        document.state = "retrying"
        document.lastError = "receiver 10.0.0.2:7000 is unreachable"
        let verdict = HealthCheck.evaluate(document, thresholds: thresholds, now: document.generatedAt)
        #expect(verdict.code == .critical)
        #expect(verdict.summary.contains("unreachable"))
    }

    @Test func alertRulesBelongToOneProcess() {
        let t = AlertThresholds(
            lagSeconds: 1, lagBytes: 1, disconnectSeconds: 1, spoolFreePercent: 50, memoryMB: 1, slotRetainedBytes: 1)
        let receiver = AlertRules.observe(
            sampleReceiver(connected: false, durableBehindBytes: 10, seconds: 5), thresholds: t,
            now: Date(timeIntervalSince1970: 1_800_000_000))
        #expect(
            Set(receiver.filter(\.firing).map(\.condition)) == [
                "memory", "lag_seconds", "lag_bytes", "sender_disconnected", "spool_free",
            ])
        var sender = sampleReceiver()
        sender.role = "sender"
        sender.spool = nil
        sender.sender = .init(
            source: "host=p", receiver: "dr:7000", synchronous: true, applicationName: "walship", walBytesSent: 10,
            wireBytesSent: 2, slot: .init(name: "walship", walStatus: "extended", retainedBytes: 10))
        let senderConditions = AlertRules.observe(sender, thresholds: t, now: Date()).filter(\.firing).map(\.condition)
        #expect(Set(senderConditions) == ["memory", "slot_retained_bytes", "slot_wal_status"])
    }

    /// The certificate that expires first decides: quiet while it has more days than the threshold, a warning
    /// within it, critical in its last week and once expired; not watched without a threshold or certificates.
    @Test func certificateExpiryWarnsThenEscalates() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        var status = sampleReceiver()
        func certificates(_ days: Double...) -> [StatusDocument.CertificateStatus] {
            days.enumerated().map {
                .init(
                    use: $0.offset == 0 ? "link" : "link CA", path: "/certs/\($0.offset).crt",
                    subject: "CN=dr", notValidAfter: now.addingTimeInterval($0.element * 86400))
            }
        }
        func observed(_ t: AlertThresholds = AlertThresholds(certificateDays: 30)) -> AlertObservation? {
            AlertRules.observe(status, thresholds: t, now: now).first { $0.condition == "certificate_expiry" }
        }
        #expect(observed() == nil)  // no TLS: nothing to watch
        status.certificates = certificates(400, 3650)
        let calm = try #require(observed())
        #expect(!calm.firing)
        status.certificates = certificates(3650, 20)
        let soon = try #require(observed())
        #expect(soon.firing && soon.severity == .warning)
        #expect(
            soon.message.contains("link CA certificate /certs/1.crt") && soon.message.contains("in 20.0 days"), "\(soon.message)")
        #expect(soon.message.contains("walship certs renew"))
        status.certificates = certificates(5)
        #expect(observed()?.severity == .critical)
        status.certificates = certificates(-1)
        let expired = try #require(observed())
        #expect(expired.firing && expired.severity == .critical && expired.message.contains("expired at"), "\(expired.message)")
        #expect(observed(AlertThresholds()) == nil)
        // The status carries the certificates (and the metrics their expiry: MonitorTests).
        let data = try StatusDocument.encoder().encode(status)
        #expect(try StatusDocument.decoder().decode(StatusDocument.self, from: data) == status)
    }

    /// A sender beside a standby (--standby-wait) is healthy while it waits, and its link being down is no alert.
    @Test func aSenderWaitingForPromotionIsHealthyAndRaisesNoLinkAlert() throws {
        var sender = sampleReceiver()
        sender.role = "sender"
        sender.spool = nil
        sender.alerts = []
        sender.state = "waiting for promotion"
        sender.systems[0].link = .init(connected: false, disconnectedSince: Date().addingTimeInterval(-3600))
        let thresholds = AlertThresholds(disconnectSeconds: 30)
        #expect(
            !AlertRules.observe(sender, thresholds: thresholds, now: Date()).contains { $0.condition == "receiver_unreachable" })
        #expect(HealthCheck.evaluate(sender, thresholds: .init(), now: Date()).code == .ok)
        sender.state = "retrying"
        #expect(
            AlertRules.observe(sender, thresholds: thresholds, now: Date()).contains {
                $0.condition == "receiver_unreachable" && $0.firing
            })
        #expect(HealthCheck.evaluate(sender, thresholds: .init(), now: Date()).code == .critical)
    }

    @Test func syncNotHonouredFiresAfterItsGraceAndMakesTheStatusWarn() throws {
        var sender = sampleReceiver()
        sender.role = "sender"
        sender.spool = nil
        sender.state = "streaming"
        sender.alerts = []
        let now = Date()
        sender.sender = .init(
            source: "host=p", receiver: "dr:7000", synchronous: true, applicationName: "walship", walBytesSent: 10,
            wireBytesSent: 2, slot: .init(name: "walship"), receiverLossPolicy: "block",
            mode: .init(mode: "sync", since: now.addingTimeInterval(-100), synchronousRequested: true, syncState: "sync"))
        let thresholds = AlertThresholds(syncNotHonouredSeconds: 30)
        func observed() throws -> AlertObservation {
            try #require(
                AlertRules.observe(sender, thresholds: thresholds, now: now).first { $0.condition == "sync_not_honoured" })
        }
        #expect(try !observed().firing)
        #expect(
            !AlertRules.observe(sender, thresholds: AlertThresholds(), now: now).contains { $0.condition == "sync_not_honoured" })

        sender.sender?.mode = .init(
            mode: "async", since: now.addingTimeInterval(-10), synchronousRequested: true, syncState: "async",
            notHonouredSince: now.addingTimeInterval(-10), detail: "synchronous_standby_names = 'other' does not name walship")
        #expect(try !observed().firing, "within the grace period")
        #expect(HealthCheck.evaluate(sender, thresholds: .init(), now: now).code == .warning)
        #expect(
            StatusTable.render(sender, verdict: HealthCheck.evaluate(sender, thresholds: .init(), now: now)).contains(
                "NOT HONOURED"))

        sender.sender?.mode?.notHonouredSince = now.addingTimeInterval(-31)
        let firing = try observed()
        #expect(firing.firing && firing.severity == .critical)
        #expect(firing.message.contains("does not name walship"))

        let data = try JSONEncoder().encode(sender)
        #expect(try JSONDecoder().decode(StatusDocument.self, from: data) == sender)
    }

    @Test func rpoExposureFiresOnlyUnderDegradeAndWhileAcknowledgedWALIsNotOffsite() throws {
        var sender = sampleReceiver()
        sender.role = "sender"
        sender.spool = nil
        sender.sender = .init(
            source: "host=p", receiver: "dr:7000", synchronous: true, applicationName: "walship", walBytesSent: 10,
            wireBytesSent: 2, slot: .init(name: "walship"), receiverLossPolicy: "block")
        let none = AlertThresholds()
        #expect(!AlertRules.observe(sender, thresholds: none, now: Date()).contains { $0.condition == "rpo_exposure" })

        sender.sender?.receiverLossPolicy = "degrade-after=30s"
        sender.sender?.degraded = false
        let calm = try #require(
            AlertRules.observe(sender, thresholds: none, now: Date()).first { $0.condition == "rpo_exposure" })
        #expect(!calm.firing)

        sender.sender?.degraded = true
        sender.sender?.rpoExposure = .init(
            bytes: 3 * 1_048_576, seconds: 42, acknowledgedLSN: "0/5300000", offsiteDurableLSN: "0/5000000")
        let exposed = try #require(
            AlertRules.observe(sender, thresholds: none, now: Date()).first { $0.condition == "rpo_exposure" })
        #expect(exposed.firing && exposed.severity == .critical)
        #expect(exposed.message.contains("3.0 MB") && exposed.message.contains("42.0 s"))

        let data = try JSONEncoder().encode(sender)
        #expect(try JSONDecoder().decode(StatusDocument.self, from: data) == sender)
    }
}

@Suite struct PromotionReportTests {
    func report(replayed: String, acknowledged: String?, spoolEnd: String?, primary: String?) -> PromotionReport {
        var r = PromotionReport(kind: "promote", host: "dr", startedAt: Date(timeIntervalSince1970: 0), dataDirectory: "/dr")
        r.lastReplayedLSN = replayed
        r.lastReplayedCommitTime = Date(timeIntervalSince1970: 100)
        r.lastAcknowledgedLSN = acknowledged
        r.lastAcknowledgedAt = Date(timeIntervalSince1970: 103)
        r.spoolEndLSN = spoolEnd
        r.primaryLastKnownLSN = primary
        r.primaryLastKnownAt = Date(timeIntervalSince1970: 104)
        r.measureRecoveryPoint()
        return r
    }

    @Test func everythingAcknowledgedReplayedIsZero() {
        let r = report(replayed: "0/5000100", acknowledged: "0/5000000", spoolEnd: "0/5000100", primary: "0/5000300")
        #expect(r.rpo?.bytes == 0 && r.rpo?.seconds == 0)
        #expect(r.unacknowledgedTail?.bytes == 0x200)
        #expect(r.unacknowledgedTail?.seconds == 4)
    }

    @Test func shortfallIsMeasured() {
        let r = report(replayed: "0/5000000", acknowledged: "0/5000100", spoolEnd: "0/5000080", primary: nil)
        #expect(r.rpo?.bytes == 0x100)
        #expect(r.rpo?.seconds == 3)
        #expect(r.unacknowledgedTail == nil)
    }

    func episode(
        _ mode: String, _ seconds: Double, lsn: String, rule: String? = "block", exposure: UInt64? = nil
    ) -> PromotionReport.ModeEpisode {
        .init(
            mode: mode, at: Date(timeIntervalSince1970: seconds), lsn: lsn, syncState: mode == "degraded" ? "sync" : mode,
            receiverLoss: rule, exposureBytes: exposure)
    }

    @Test func onlyASynchronousBlockingLinkCoveringReplayProvesEveryAcknowledgedCommit() {
        var r = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        r.judgeLoss(history: [episode("sync", 10, lsn: "0/4000000")], promotedAt: Date(timeIntervalSince1970: 200))
        #expect(r.modeAtLoss == "sync" && r.everyAcknowledgedCommitPresent == true)
        #expect(r.loss?.contains("synchronous_commit on or remote_apply") == true)
        #expect(r.markdown.lowercased().contains("every acknowledged commit is present"))

        // Synchronous only since after replay's end: commits before it may have been acknowledged without the DR site.
        var late = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        late.judgeLoss(
            history: [episode("async", 10, lsn: "0/4000000"), episode("sync", 50, lsn: "0/5000200")],
            promotedAt: Date(timeIntervalSince1970: 200))
        #expect(late.modeAtLoss == "sync" && late.everyAcknowledgedCommitPresent == false)
        #expect(!late.markdown.lowercased().contains("every acknowledged commit is present"))
    }

    /// The reproduced case: an asynchronous link, the primary killed after commits it never reported. The report
    /// must not say every acknowledged commit is present, and says the loss after the last contact is unknown.
    @Test func anAsynchronousLinkNeverClaimsEveryAcknowledgedCommit() {
        var r = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        r.judgeLoss(history: [episode("async", 10, lsn: "0/4000000", rule: "none")], promotedAt: Date(timeIntervalSince1970: 200))
        #expect(r.modeAtLoss == "async" && r.everyAcknowledgedCommitPresent == false)
        #expect(r.loss?.contains("may be missing") == true && r.loss?.contains("after that is unknown") == true)
        #expect(r.lastContactAt == Date(timeIntervalSince1970: 104) && r.lastContactLSN == "0/5000100")
        #expect(!r.markdown.lowercased().contains("every acknowledged commit is present"))
        for mode in ["quorum", "potential"] {
            var q = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
            q.judgeLoss(history: [episode(mode, 10, lsn: "0/4000000")], promotedAt: Date(timeIntervalSince1970: 200))
            #expect(q.modeAtLoss == "async", "\(mode) does not promise the DR site")
        }
        var none = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: nil)
        none.judgeLoss(history: [], promotedAt: Date(timeIntervalSince1970: 200))
        #expect(none.modeAtLoss == "unknown" && none.everyAcknowledgedCommitPresent == false)
        var v1 = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: nil)
        v1.judgeLoss(history: [episode("unknown", 10, lsn: "0/4000000", rule: nil)], promotedAt: Date(timeIntervalSince1970: 200))
        #expect(v1.modeAtLoss == "unknown")
    }

    @Test func degradeAfterIsDegradedOnceTheSilenceOutlastsItsDelay() {
        let history = [episode("sync", 10, lsn: "0/4000000", rule: "degrade-after 30 s")]
        var quiet = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        quiet.judgeLoss(history: history, promotedAt: Date(timeIntervalSince1970: 104 + 31))
        #expect(quiet.modeAtLoss == "degraded" && quiet.everyAcknowledgedCommitPresent == false)
        #expect(quiet.loss?.contains("after that is unknown") == true)
        var soon = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        soon.judgeLoss(history: history, promotedAt: Date(timeIntervalSince1970: 104 + 5))
        #expect(soon.modeAtLoss == "sync", "within its delay the sender cannot have acknowledged from its buffer")

        var episodeAtLoss = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        episodeAtLoss.judgeLoss(
            history: history + [episode("degraded", 60, lsn: "0/5000000", rule: "degrade-after 30 s", exposure: 8192)],
            promotedAt: Date(timeIntervalSince1970: 300))
        #expect(episodeAtLoss.modeAtLoss == "degraded")
        #expect(episodeAtLoss.loss?.contains("8.0 kB") == true, "\(episodeAtLoss.loss ?? "")")
        #expect(episodeAtLoss.markdown.contains("exposure 8.0 kB"))
    }

    /// An acknowledgement after the primary's last report (a sender still linked, its verdict link) does not move
    /// the last contact: under degrade-after that would shorten the silence and could turn degraded into sync.
    @Test func theLastContactIsThePrimarysOwnReport() {
        var r = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        r.lastAcknowledgedAt = Date(timeIntervalSince1970: 150)
        r.judgeLoss(
            history: [episode("sync", 10, lsn: "0/4000000", rule: "degrade-after 30 s")],
            promotedAt: Date(timeIntervalSince1970: 104 + 40))
        #expect(r.lastContactAt == Date(timeIntervalSince1970: 104))
        #expect(r.modeAtLoss == "degraded", "40 s after the primary's last report is past the 30 s delay")
    }

    @Test func theHistoryKeepsTheLastDayAndTheModeInForceWhenItBegan() {
        var r = report(replayed: "0/5000100", acknowledged: "0/5000100", spoolEnd: "0/5000100", primary: "0/5000100")
        let day = 86400.0
        r.judgeLoss(
            history: [
                episode("async", 1, lsn: "0/1000000"), episode("sync", 2, lsn: "0/2000000"),
                episode("sync", day + 50, lsn: "0/3000000"),
            ],
            promotedAt: Date(timeIntervalSince1970: day + 100))
        #expect(r.modeHistory?.map(\.lsn) == ["0/2000000", "0/3000000"])
    }

    @Test func markdownListsChecks() {
        var r = report(replayed: "0/1", acknowledged: "0/1", spoolEnd: "0/1", primary: "0/1")
        r.check("promoted", true, "timeline 2")
        r.check("fence written", false, "no permission")
        #expect(r.markdown.contains("- [x] **promoted**: timeline 2"))
        #expect(r.markdown.contains("- [ ] **fence written**: no permission"))
        #expect(r.markdown.contains("RPO"))
    }
}

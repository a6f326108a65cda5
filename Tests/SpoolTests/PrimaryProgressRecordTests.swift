import Foundation
import Testing

@testable import Spool

/// A receiver restarted after the primary was lost writes primary.json before any link: what it found must stay.
@Suite struct PrimaryProgressRecordTests {
    let found = PrimaryProgressRecord(
        primaryLSN: "0/3020B58", primaryTime: Date(timeIntervalSince1970: 1_800_000_000), timeline: 1,
        acknowledgedLSN: "0/3020B58", acknowledgedAt: Date(timeIntervalSince1970: 1_800_000_001), senderName: "walship",
        synchronous: true, updatedAt: Date(timeIntervalSince1970: 1_800_000_001),
        primaryLastHeardAt: Date(timeIntervalSince1970: 1_800_000_001), linkTimeoutSeconds: 5)

    /// What a fresh receiver knows: the spool's timeline and its own settings, nothing of the primary.
    func fresh(timeline: UInt32) -> PrimaryProgressRecord {
        PrimaryProgressRecord(
            primaryLSN: nil, primaryTime: nil, timeline: timeline, acknowledgedLSN: nil, acknowledgedAt: nil,
            senderName: nil, synchronous: nil, updatedAt: Date(timeIntervalSince1970: 1_800_000_100),
            linkTimeoutSeconds: 10)
    }

    @Test func aFreshReceiverKeepsTheLastReportAndAcknowledgementItFound() {
        let record = fresh(timeline: 1).carryingOver(found)
        #expect(record.primaryLSN == "0/3020B58" && record.primaryTime == found.primaryTime)
        #expect(record.acknowledgedLSN == "0/3020B58" && record.acknowledgedAt == found.acknowledgedAt)
        #expect(record.senderName == "walship" && record.synchronous == true)
        #expect(record.primaryLastHeardAt == found.primaryLastHeardAt)
        // Its own settings are its own.
        #expect(record.linkTimeoutSeconds == 10)
        #expect(fresh(timeline: 1).carryingOver(nil) == fresh(timeline: 1))
    }

    @Test func newerFiguresWinAndEachPositionKeepsItsOwnTime() {
        var live = fresh(timeline: 1)
        live.primaryLSN = "0/4000000"
        live.primaryTime = Date(timeIntervalSince1970: 1_800_000_200)
        let record = live.carryingOver(found)
        #expect(record.primaryLSN == "0/4000000" && record.primaryTime == live.primaryTime)
        // The acknowledgement was not renewed yet: the one found stays, with its time.
        #expect(record.acknowledgedLSN == "0/3020B58" && record.acknowledgedAt == found.acknowledgedAt)
    }

    @Test func positionsOfAnotherTimelineAreNotCarried() {
        let record = fresh(timeline: 2).carryingOver(found)
        #expect(record.primaryLSN == nil && record.primaryTime == nil)
        #expect(record.acknowledgedLSN == nil && record.acknowledgedAt == nil)
        #expect(record.primaryLastHeardAt == found.primaryLastHeardAt)
    }
}

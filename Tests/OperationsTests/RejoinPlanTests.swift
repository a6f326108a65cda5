import Testing
import WALCore

@testable import Operations

struct RejoinPlanTests {
    static let controlText = """
        pg_control version number:            1300
        Database system identifier:           7716587133699496350
        Database cluster state:               in production
        Latest checkpoint location:           0/7000060
        Latest checkpoint's TimeLineID:       1
        wal_log_hints setting:                off
        Bytes per WAL segment:                16777216
        Data page checksum version:           0
        """

    @Test func theControlFileSaysWhetherARewindCanFindEveryChangedPage() throws {
        let fields = RejoinPlan.controlData(Self.controlText)
        #expect(fields["Latest checkpoint location"] == "0/7000060")
        var target = try #require(RejoinPlan.Target(controlData: fields))
        #expect(target.systemIdentifier == 7_716_587_133_699_496_350 && target.timeline == 1)
        #expect(target.state == "in production")
        #expect(!target.canRewind)
        let refusal = RejoinPlan.refusal(target: target, sourceSystem: target.systemIdentifier, dataDirectory: "/pg")
        #expect(refusal?.contains("neither wal_log_hints nor data checksums") == true)
        #expect(refusal?.contains("hint: re-seed it instead: move /pg aside, never delete it") == true)
        target.walLogHints = true
        #expect(RejoinPlan.refusal(target: target, sourceSystem: target.systemIdentifier, dataDirectory: "/pg") == nil)
        #expect(
            RejoinPlan.refusal(target: target, sourceSystem: 42, dataDirectory: "/pg")?.contains("never were one cluster") == true
        )
        var checksums = fields
        checksums["Data page checksum version"] = "1"
        #expect(RejoinPlan.Target(controlData: checksums)?.canRewind == true)
        #expect(RejoinPlan.Target(controlData: [:]) == nil)
    }

    @Test func theForkIsWhereTheOldTimelineLeftTheNewPrimarysHistory() {
        let history = "1\t0/7007DB8\tno recovery target specified\n2\t0/9000000\tx\n"
        #expect(RejoinPlan.forkPoint(targetTimeline: 1, sourceTimeline: 3, sourceHistory: history) == LSN("0/7007DB8"))
        #expect(RejoinPlan.forkPoint(targetTimeline: 2, sourceTimeline: 3, sourceHistory: history) == LSN("0/9000000"))
        // Not an ancestor, the same timeline, garbage: nothing to rejoin to.
        #expect(RejoinPlan.forkPoint(targetTimeline: 4, sourceTimeline: 3, sourceHistory: history) == nil)
        #expect(RejoinPlan.forkPoint(targetTimeline: 3, sourceTimeline: 3, sourceHistory: history) == nil)
        #expect(RejoinPlan.forkPoint(targetTimeline: 1, sourceTimeline: 2, sourceHistory: "not a history") == nil)
    }

    @Test func theSegmentsPastTheForkAreTheOldTimelinesFromTheForksOn() {
        let names = [
            "000000010000000000000006", "000000010000000000000007", "000000010000000000000008", "000000020000000000000007",
            "00000002.history", "archive_status", "000000010000000000000005.partial",
        ]
        #expect(
            RejoinPlan.segmentsPastFork(fileNames: names, timeline: 1, fork: LSN("0/7007DB8")!, segmentSize: .default)
                == ["000000010000000000000007", "000000010000000000000008"])
    }

    @Test func pgWaldumpsListingCountsTheLostTransactions() {
        let output = """
            rmgr: Heap        len (rec/tot):     59/    59, tx:        741, lsn: 0/07007DB8, prev 0/07007D80, desc: INSERT off 10 flags 0x00, blkref #0: rel 1663/5/16400 blk 0
            rmgr: Transaction len (rec/tot):     34/    34, tx:        741, lsn: 0/07007DF8, prev 0/07007DB8, desc: COMMIT 2026-12-07 15:39:48.959266 UTC
            rmgr: Transaction len (rec/tot):     34/    34, tx:        742, lsn: 0/07007E20, prev 0/07007DF8, desc: ABORT 2026-12-07 15:39:49.000001 UTC
            rmgr: Transaction len (rec/tot):     34/    34, tx:        743, lsn: 0/07009158, prev 0/07007E20, desc: COMMIT 2026-12-07 15:39:54.927114 UTC; inval msgs: catcache 1
            pg_waldump: error: error in WAL record at 0/7009158: invalid record length at 0/7009180: wanted 24, got 0
            """
        let lost = RejoinPlan.lostWAL(waldump: output)
        #expect(lost.commits == 2 && lost.aborts == 1)
        #expect(lost.firstLSN == "0/07007DB8" && lost.lastLSN == "0/07009158")
        #expect(lost.firstCommitAt == "2026-12-07 15:39:48.959266" && lost.lastCommitAt == "2026-12-07 15:39:54.927114")
        #expect(RejoinPlan.lostWAL(waldump: "") == RejoinPlan.LostWAL(commits: 0, aborts: 0))
    }

    @Test func pgRewindsProgressGivesWhatItCopied() {
        let output = """
            pg_rewind: connected to server
            pg_rewind: servers diverged at WAL location 0/7007DB8 on timeline 1
            pg_rewind: need to copy 51 MB (total source directory size is 145 MB)
                0/53089 kB (0%) copied\r53089/53089 kB (100%) copied
            pg_rewind: Done!
            """
        let sizes = RejoinPlan.rewindSizes(output)
        #expect(sizes.copiedBytes == 53089 << 10)
        #expect(sizes.sourceBytes == 145 << 20)
        #expect(RejoinPlan.rewindSizes("pg_rewind: Done!") == (nil, nil))
    }

    @Test func theStandbySettingsFollowThisSitesReceiver() {
        let lines = RejoinPlan.standbySettings(
            primaryConninfo: "host=127.0.0.1 port=7010 user=o'brien", restoreCommand: "/usr/bin/walship restore-wal %f %p")
        #expect(lines.contains("primary_conninfo = 'host=127.0.0.1 port=7010 user=o''brien'"))
        #expect(lines.contains("restore_command = '/usr/bin/walship restore-wal %f %p'"))
        #expect(lines.contains("recovery_target_timeline = 'latest'"))
    }
}

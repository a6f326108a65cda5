import Foundation
import StatusModel
import Testing

@testable import Operations

@Suite struct DrillPlanTests {
    @Test func theCopyLivesInTheWorkDirectoryAndListensOnLoopbackOnly() {
        let plan = DrillPlan(base: "/tmp/walship-drill-abc")
        #expect(plan.dataDirectory == "/tmp/walship-drill-abc/pgdata")
        let settings = plan.recoverySettings(port: 54_321)
        #expect(settings.contains("port = 54321"))
        #expect(settings.contains("listen_addresses = '127.0.0.1'"))
        #expect(settings.contains("unix_socket_directories = '/tmp/walship-drill-abc'"))
        // Nothing the copy does may reach the primary, archive, or wait for a standby.
        for setting in ["primary_conninfo = ''", "archive_mode = off", "archive_command = ''", "synchronous_standby_names = ''"] {
            #expect(settings.contains(setting))
        }
        #expect(DrillPlan(base: "/tmp/o'brien").recoverySettings(port: 1).contains("unix_socket_directories = '/tmp/o''brien'"))
    }

    @Test func cleanupKeepsOnlyARunningCopyThatWasAskedFor() {
        #expect(DrillPlan.cleanup(keep: false, serverStarted: true) == .init(stopServer: true, removeWorkDirectory: true))
        #expect(DrillPlan.cleanup(keep: true, serverStarted: true) == .init(stopServer: false, removeWorkDirectory: false))
        #expect(DrillPlan.cleanup(keep: true, serverStarted: false) == .init(stopServer: false, removeWorkDirectory: true))
        #expect(DrillPlan.cleanup(keep: false, serverStarted: false) == .init(stopServer: false, removeWorkDirectory: true))
    }

    @Test func pgCtlRunsAsThePostgreSQLUserWhenRoot() {
        #expect(DrillPlan.pgCtlUser(osUser: "postgres", runningAsRoot: true) == "postgres")
        #expect(DrillPlan.pgCtlUser(osUser: "postgres", runningAsRoot: false) == nil)
        #expect(DrillPlan.pgCtlUser(osUser: "root", runningAsRoot: true) == nil)
    }

    @Test func bindirFromTheEnvironmentElseDebiansDirectory() {
        #expect(DrillPlan.postgresBindir(environment: ["PG_BINDIR": "/opt/pg/bin"]) == "/opt/pg/bin")
        #expect(DrillPlan.postgresBindir(environment: ["PG_BINDIR": ""]) == "/usr/lib/postgresql/15/bin")
        #expect(DrillPlan.postgresBindir(environment: [:]) == "/usr/lib/postgresql/15/bin")
    }

    @Test func aFailedSanityCheckFailsTheDrill() {
        let passed = [PromotionReport.Check(name: "writes", passed: true, detail: "")]
        let failed = passed + [PromotionReport.Check(name: "check query", passed: false, detail: "syntax error")]
        #expect(DrillPlan.failure(error: nil, checks: passed) == nil)
        #expect(DrillPlan.failure(error: nil, checks: failed) == "a sanity check failed")
        #expect(DrillPlan.failure(error: "no backup", checks: failed) == "no backup")
    }

    @Test func restoreSettingsForAStandbyOrATarget() {
        #expect(
            recoverySettings(
                primaryConninfo: "host=dr user='r'", targetTime: nil, targetLSN: nil, targetName: nil, targetAction: "pause")
                == ["primary_conninfo = 'host=dr user=''r'''"])
        #expect(
            recoverySettings(
                primaryConninfo: nil, targetTime: nil, targetLSN: "0/3000000", targetName: nil, targetAction: "promote")
                == ["recovery_target_lsn = '0/3000000'", "recovery_target_action = 'promote'"])
        #expect(
            recoverySettings(primaryConninfo: nil, targetTime: nil, targetLSN: nil, targetName: nil, targetAction: "pause")
                == ["recovery_target_action = 'pause'"])
    }
}

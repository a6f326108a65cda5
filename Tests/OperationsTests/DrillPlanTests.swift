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

    /// What `walship drill --help` promises for --pg-bindir: pg_config --bindir first, then PG_BINDIR, then Debian's.
    @Test func drillBindirFromPgConfigFirst() {
        let environment = ["PG_BINDIR": "/opt/pg/bin"]
        #expect(
            DrillPlan.postgresBindir(pgConfig: "/usr/lib/postgresql/15/bin\n", environment: environment)
                == "/usr/lib/postgresql/15/bin")
        // pg_config missing or failed, or printing something that is not one absolute path: the next choice.
        for printed in [nil, "", "\n", "bin", "/a\n/b"] {
            #expect(
                DrillPlan.postgresBindir(pgConfig: printed, environment: environment) == "/opt/pg/bin",
                "\(String(describing: printed))")
        }
        #expect(DrillPlan.postgresBindir(pgConfig: nil, environment: [:]) == "/usr/lib/postgresql/15/bin")
        #expect(DrillPlan.postgresBindirDefault.hasPrefix("pg_config --bindir, else PG_BINDIR"))
    }

    /// The program is really run: its answer here, where PostgreSQL's development files may be installed.
    @Test func pgConfigIsAskedWhereItIsInstalled() async throws {
        let installed = ProcessInfo.processInfo.environment["PATH", default: "/usr/bin"].split(separator: ":")
            .contains { FileManager.default.isExecutableFile(atPath: "\($0)/pg_config") }
        let printed = await pgConfigBindir()
        if installed {
            let bindir = try #require(printed).trimmingCharacters(in: .whitespacesAndNewlines)
            // An absolute path (libpq-dev's pg_config names the server's directory even where no server is installed).
            #expect(bindir.hasPrefix("/") && DrillPlan.postgresBindir(pgConfig: printed, environment: [:]) == bindir)
        } else {
            #expect(printed == nil)
        }
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

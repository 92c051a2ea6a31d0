package operator

import (
	"io"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// AuditLogger returns the logger of the custody audit log: JSON lines to w,
// in the format of the manager's other lines (controller-runtime's
// production encoder), named "audit", and never sampled. The manager's
// general logger samples repeated messages (zap keeps the first 100 a
// second, then every 100th); every audit line has the same message, and the
// audit log must keep every entry (`custodyctl history verify --audit-log`).
func AuditLogger(w io.Writer) logr.Logger {
	cfg := zap.NewProductionEncoderConfig()
	cfg.EncodeTime = zapcore.RFC3339TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(cfg), zapcore.AddSync(w), zapcore.InfoLevel)
	return zapr.NewLogger(zap.New(core)).WithName("audit")
}

package protocol

import "strings"

// The data plane's names for a device (docs/data-plane.md). A device's name
// is "<model>.<serial>" in lower case, neither part holding a dot, so its
// subject space is two tokens no other device shares.

// MQTTClientID is the MQTT client identifier a device connects with: its
// name with the dot between model and serial number written '_' (an MQTT
// client ID names a nats-server session and may hold no dot). Neither a
// model nor a serial number holds '_', so no two devices share one.
func MQTTClientID(device string) string { return strings.Replace(device, ".", "_", 1) }

// DeviceSubject is the NATS subject of suffix (dot-separated tokens) in a
// device's subject space: "devices.<model>.<serial>.<suffix>".
func DeviceSubject(device, suffix string) string { return "devices." + device + "." + suffix }

// DeviceTopic is the MQTT topic of the same: "devices/<model>/<serial>/<suffix>"
// (nats-server maps '/' in MQTT topics to '.' in subjects).
func DeviceTopic(device, suffix string) string {
	return "devices/" + strings.Replace(device, ".", "/", 1) + "/" + strings.ReplaceAll(suffix, ".", "/")
}

// Subject suffixes a device uses.
const (
	// SuffixTelemetry: what the device measures.
	SuffixTelemetry = "telemetry"
	// SuffixCommands: what the owner asks of the device (and below it).
	SuffixCommands = "commands"
)

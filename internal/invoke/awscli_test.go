package invoke

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const awsCLI = "/usr/bin/aws"

// runAWS runs `aws lambda invoke` against e with the given credentials and
// returns its JSON output, the payload it wrote and its error.
func runAWS(t *testing.T, e *testEnv, key, secret string, args ...string) (map[string]any, string, string, error) {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "out.json")
	cmdArgs := append([]string{"lambda", "invoke", "--endpoint-url", e.srv.URL, "--cli-binary-format", "raw-in-base64-out", "--output", "json"}, args...)
	cmdArgs = append(cmdArgs, out)
	cmd := exec.Command(awsCLI, cmdArgs...)
	cmd.Env = []string{
		"HOME=" + dir, "PATH=/usr/bin:/bin",
		"AWS_ACCESS_KEY_ID=" + key, "AWS_SECRET_ACCESS_KEY=" + secret,
		"AWS_DEFAULT_REGION=eu-west-3", "AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=",
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "credentials"),
		"AWS_MAX_ATTEMPTS=1",
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var res map[string]any
	if err == nil {
		if jerr := json.Unmarshal([]byte(stdout.String()), &res); jerr != nil {
			t.Fatalf("aws output %q: %v", stdout.String(), jerr)
		}
	}
	payload, _ := os.ReadFile(out)
	return res, string(payload), stderr.String(), err
}

// TestAWSCLI proves that the real aws CLI's signatures verify: the
// function name in the path (with its ':' percent-encoded by botocore),
// the Host header with its port, the content hash of the body.
func TestAWSCLI(t *testing.T) {
	if _, err := os.Stat(awsCLI); err != nil {
		t.Skipf("%s is absent (Debian's awscli package): cannot run the aws CLI compatibility test", awsCLI)
	}
	e, _, _ := handlerEnv(t, nil, false)
	for _, name := range []string{"hello", "c1:function:hello", "arn:aws:lambda:eu-west-3:c1:function:hello:1"} {
		t.Run(name, func(t *testing.T) {
			res, payload, stderr, err := runAWS(t, e, "c1", "c1-secret", "--function-name", name, "--payload", `{"from":"aws cli"}`, "--log-type", "Tail")
			if err != nil {
				t.Fatalf("aws lambda invoke: %v\n%s", err, stderr)
			}
			if res["StatusCode"] != float64(200) {
				t.Errorf("StatusCode %v, want 200 (output %v)", res["StatusCode"], res)
			}
			wantVersion := "2"
			if strings.HasSuffix(name, ":1") {
				wantVersion = "1"
			}
			if res["ExecutedVersion"] != wantVersion {
				t.Errorf("ExecutedVersion %v, want %s", res["ExecutedVersion"], wantVersion)
			}
			logTail, _ := base64.StdEncoding.DecodeString(res["LogResult"].(string))
			if !strings.HasSuffix(string(logTail), "END") {
				t.Errorf("LogResult does not decode to the log's end: %q", res["LogResult"])
			}
			if !strings.Contains(payload, `"echo":{"from":"aws cli"}`) {
				t.Errorf("payload %s does not echo the input", payload)
			}
		})
	}
	t.Run("function error", func(t *testing.T) {
		res, payload, stderr, err := runAWS(t, e, "c1", "c1-secret", "--function-name", "hello", "--payload", `{"fail":"boom"}`)
		if err != nil {
			t.Fatalf("aws lambda invoke: %v\n%s", err, stderr)
		}
		if res["FunctionError"] != "Unhandled" || !strings.Contains(payload, "boom") {
			t.Errorf("got %v and payload %s, want FunctionError Unhandled and the error document", res, payload)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		_, _, stderr, err := runAWS(t, e, "c1", "not-the-secret", "--function-name", "hello", "--payload", `{}`)
		if err == nil || !strings.Contains(stderr, "InvalidSignatureException") {
			t.Errorf("got err %v, stderr %q; want a non-zero exit with InvalidSignatureException", err, stderr)
		}
	})
	t.Run("unknown key", func(t *testing.T) {
		_, _, stderr, err := runAWS(t, e, "nobody", "x", "--function-name", "hello", "--payload", `{}`)
		if err == nil || !strings.Contains(stderr, "UnrecognizedClientException") {
			t.Errorf("got err %v, stderr %q; want a non-zero exit with UnrecognizedClientException", err, stderr)
		}
	})
	t.Run("other cluster", func(t *testing.T) {
		_, _, stderr, err := runAWS(t, e, "c1", "c1-secret", "--function-name", "c2:function:solo", "--payload", `{}`)
		if err == nil || !strings.Contains(stderr, "AccessDeniedException") {
			t.Errorf("got err %v, stderr %q; want a non-zero exit with AccessDeniedException", err, stderr)
		}
	})
	t.Run("event", func(t *testing.T) {
		_, _, stderr, err := runAWS(t, e, "c1", "c1-secret", "--function-name", "hello", "--invocation-type", "DryRun", "--payload", `{}`)
		if err != nil {
			t.Errorf("DryRun: %v\n%s", err, stderr)
		}
	})
}

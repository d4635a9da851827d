"""The console's labels in English and Chinese, and the choice of language: ``?lang=``
(remembered in a cookie), else the cookie, else the browser's ``Accept-Language``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

LANGS = ("en", "zh")
NAMES = MappingProxyType({"en": "English", "zh": "中文"})

_PAIRS: Mapping[str, tuple[str, str]] = MappingProxyType({
    # layout
    "app.title": ("Open-AutoGLM console", "Open-AutoGLM 控制台"),
    "skip": ("Skip to content", "跳到正文"),
    "nav.label": ("Console pages", "控制台页面"),
    "nav.home": ("Overview", "概览"),
    "nav.tenants": ("Tenants", "租户"),
    "nav.models": ("Models", "模型"),
    "nav.usage": ("Usage", "用量"),
    "nav.audit": ("Audit", "审计"),
    "nav.alerts": ("Alerts", "告警"),
    "nav.playground": ("Playground", "试验场"),
    "lang.switch": ("Language", "语言"),
    "signout": ("Sign out", "退出登录"),
    "signed_in_as": ("Signed in as", "当前用户"),
    "none": ("none", "无"),
    "yes": ("yes", "是"),
    "no": ("no", "否"),
    "back": ("Back", "返回"),
    "more": ("More", "更多"),
    "actions": ("Actions", "操作"),
    "name": ("Name", "名称"),
    "id": ("ID", "ID"),
    "created": ("Created", "创建时间"),
    "kind": ("Kind", "类型"),
    "state": ("State", "状态"),
    "save": ("Save", "保存"),
    "create": ("Create", "创建"),
    "masked_note": ("Some fields are masked for your role.", "部分字段按您的角色已脱敏。"),
    # sign-in
    "login.title": ("Sign in", "登录"),
    "login.key": ("API key", "API 密钥"),
    "login.key_help": ("The key is checked once and never stored in the page or the browser.",
                       "密钥仅用于验证一次，不会保存在页面或浏览器中。"),
    "login.submit": ("Sign in", "登录"),
    "login.failed": ("That key was not accepted.", "该密钥未被接受。"),
    "login.not_allowed": ("This key may not sign in to the console.", "该密钥无权登录控制台。"),
    # errors
    "error.title": ("Something was refused", "请求被拒绝"),
    # overview
    "home.title": ("Overview", "概览"),
    "home.principal": ("Principal", "主体"),
    "home.tenant": ("Tenant", "租户"),
    "home.roles": ("Roles", "角色"),
    "home.key": ("Signed in with key", "登录所用密钥"),
    "home.expires": ("Session ends", "会话结束时间"),
    "home.my_keys": ("My principal and keys", "我的主体与密钥"),
    "role": ("Role", "角色"),
    "scope": ("Scope", "范围"),
    # tenants and projects
    "tenants.title": ("Tenants", "租户"),
    "tenants.new": ("New tenant", "新建租户"),
    "tenant.title": ("Tenant", "租户"),
    "tenant.grant": ("Granted models", "授权模型"),
    "tenant.grant_help": ("Projects of this tenant can only use these.",
                          "该租户的项目只能使用这些模型。"),
    "projects.title": ("Projects", "项目"),
    "projects.new": ("New project", "新建项目"),
    "project.title": ("Project", "项目"),
    "project.models": ("Allowed models", "允许的模型"),
    "principals.title": ("Principals", "主体"),
    "principals.new": ("New principal", "新建主体"),
    "principal.user": ("person", "用户"),
    "principal.service": ("service account", "服务账号"),
    "principal.title": ("Principal", "主体"),
    "bindings.title": ("Role bindings", "角色绑定"),
    "bindings.new": ("New role binding", "新建角色绑定"),
    "bindings.delete": ("Remove", "移除"),
    "project": ("Project", "项目"),
    "whole_tenant": ("whole tenant", "整个租户"),
    # keys
    "keys.title": ("API keys", "API 密钥"),
    "keys.new": ("New key", "新建密钥"),
    "keys.display": ("Key", "密钥"),
    "keys.expires": ("Expires", "过期时间"),
    "keys.expires_hours": ("Expires in hours (empty: never)", "有效小时数（留空：永不过期）"),
    "keys.revoked": ("Revoked", "已吊销"),
    "keys.rotated_to": ("Rotated to", "已轮换为"),
    "keys.models": ("Limited to models", "限定模型"),
    "keys.projects": ("Limited to projects", "限定项目"),
    "keys.any": ("any", "不限"),
    "keys.rotate": ("Rotate", "轮换"),
    "keys.grace": ("Grace hours", "宽限小时数"),
    "keys.immediate": ("End the old key now", "立即停用旧密钥"),
    "keys.revoke": ("Revoke", "吊销"),
    "keys.active": ("active", "有效"),
    "secret.title": ("The new key's secret", "新密钥"),
    "secret.once": ("Copy it now: it is shown this once and never again; only its hash is kept.",
                    "请立即复制：它只显示这一次，服务器只保存其哈希值。"),
    "secret.copy": ("Copy", "复制"),
    "secret.copied": ("Copied", "已复制"),
    # models
    "models.title": ("Models", "模型"),
    "models.verified": ("Verified", "已校验"),
    "models.source": ("Source", "来源"),
    "models.signed_by": ("Signed by", "签名者"),
    "models.unsigned": ("not signed", "未签名"),
    "models.checks": ("Checks at load", "加载时检查"),
    "models.sha256": ("SHA-256 loaded", "加载文件 SHA-256"),
    "models.checked_at": ("Checked at", "检查时间"),
    "models.context": ("Context length", "上下文长度"),
    "engines.title": ("Engines and instances", "引擎与实例"),
    "engines.engine": ("Engine", "引擎"),
    "engines.instance": ("Instance", "实例"),
    "engines.in_flight": ("In flight", "进行中"),
    "engines.queued": ("Queued", "排队"),
    "engines.failures": ("Recent failures", "近期失败"),
    "engines.drain": ("Drain", "排空"),
    "engines.resume": ("Resume", "恢复"),
    # usage
    "usage.title": ("Usage", "用量"),
    "usage.bucket": ("Period", "时间粒度"),
    "usage.hour": ("hour", "小时"),
    "usage.day": ("day", "天"),
    "usage.since": ("Since", "起始"),
    "usage.group": ("Per", "分组"),
    "usage.metric": ("Show", "指标"),
    "usage.requests": ("Requests", "请求数"),
    "usage.tokens": ("Tokens", "Token 数"),
    "usage.errors": ("Errors", "错误数"),
    "usage.show": ("Show", "显示"),
    "usage.empty": ("No usage in this period.", "该时间段内无用量。"),
    "usage.table": ("Usage figures", "用量数据"),
    "usage.period": ("Period start", "时段开始"),
    "usage.p95": ("p95 latency (ms)", "p95 延迟（毫秒）"),
    "group.model": ("model", "模型"),
    "group.tenant": ("tenant", "租户"),
    "group.project": ("project", "项目"),
    "group.key": ("key", "密钥"),
    # alerts
    "alerts.title": ("Usage alerts", "用量告警"),
    "alerts.help": ("Bursts, error and refusal spikes, keys used from new addresses and tenants "
                    "nearing their daily quota, raised in the last {days} days, newest first.",
                    "最近 {days} 天内的突发流量、错误与拒绝激增、密钥从新地址使用以及租户接近每日"
                    "配额的告警，最新的在前。"),
    "alerts.signal": ("Signal", "信号"),
    "alerts.subject": ("Key or tenant", "密钥或租户"),
    "alerts.value": ("Value", "数值"),
    "alerts.baseline": ("Usual", "基线"),
    "alerts.threshold": ("Threshold", "阈值"),
    "alerts.addresses": ("New addresses", "新地址"),
    "alerts.empty": ("No alerts in this period.", "此期间没有告警。"),
    # audit
    "audit.title": ("Audit trail", "审计记录"),
    "audit.filters": ("Filters", "筛选"),
    "audit.since": ("Since (RFC 3339 or date)", "起始（RFC 3339 或日期）"),
    "audit.until": ("Until", "截止"),
    "audit.tenant": ("Tenant id", "租户 ID"),
    "audit.actor": ("Actor", "执行者"),
    "audit.action": ("Action", "动作"),
    "audit.decision": ("Decision", "结果"),
    "audit.any": ("any", "全部"),
    "audit.apply": ("Apply", "应用"),
    "audit.seq": ("Seq", "序号"),
    "audit.time": ("Time", "时间"),
    "audit.resource": ("Resource", "资源"),
    "audit.status": ("Status", "状态码"),
    "audit.older": ("Older records", "更早的记录"),
    "audit.verify": ("Verify the chain", "校验审计链"),
    "audit.intact": ("The chain is intact", "审计链完整"),
    "audit.broken": ("The chain is NOT intact", "审计链已被篡改"),
    "audit.records": ("Records verified", "已校验记录数"),
    "audit.head": ("Head", "链头"),
    "audit.checkpoints": ("Signed checkpoints matched", "匹配的签名检查点"),
    "audit.fault": ("First fault", "首个异常"),
    "audit.empty": ("No records match.", "没有匹配的记录。"),
    # playground
    "play.title": ("Playground", "试验场"),
    "play.model": ("Model", "模型"),
    "play.project": ("Project (optional)", "项目（可选）"),
    "play.prompt": ("Message", "消息"),
    "play.max_tokens": ("Max tokens", "最大 Token 数"),
    "play.send": ("Send", "发送"),
    "play.stop": ("Stop", "停止"),
    "play.answer": ("Answer", "回答"),
    "play.no_models": ("No model is available to you.", "没有可用的模型。"),
    "play.default_project": ("your key's own", "默认"),
})

_TABLES = {lang: MappingProxyType({k: v[i] for k, v in _PAIRS.items()})
           for i, lang in enumerate(LANGS)}


class Labels:
    """``t("key")`` in templates: the label in the page's language (the key if unknown,
    so a missing label shows instead of failing)."""

    __slots__ = ("_table", "lang")

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._table = _TABLES[lang]

    def __call__(self, key: str) -> str:
        return self._table.get(key, key)


def choose(asked: str | None, cookie: str | None, accept: str | None) -> str:
    for candidate in (asked, cookie):
        if candidate in LANGS:
            return candidate  # type: ignore[return-value]
    for part in (accept or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def missing() -> dict[str, list[str]]:
    """Labels without a translation (for the tests): none should be."""
    return {lang: [k for k, v in _PAIRS.items() if not v[i]] for i, lang in enumerate(LANGS)}

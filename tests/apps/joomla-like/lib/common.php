<?php
/*
 * Shared helpers of the joomla-like app: paths, the "local-images" adapter's file info
 * (shape of plugins/filesystem/local LocalAdapter::getPathInformation + ApiModel::getFile),
 * Joomla's JsonResponse envelope, the CSRF form token.
 */
const JL_ROOT = __DIR__ . '/..';
// JOOMLA_LIKE_IMAGES (environment of php -S) puts images/ elsewhere, e.g. a test's temp dir.
define('JL_IMAGES', rtrim(getenv('JOOMLA_LIKE_IMAGES') ?: (JL_ROOT . '/images'), '/'));
const JL_ADAPTER = 'local-images';
const JL_EXTENSIONS = ['bmp', 'gif', 'jpg', 'jpeg', 'png', 'webp', 'avif', 'svg', 'ico', 'mp3', 'm4a',
    'mp4a', 'ogg', 'mp4', 'mp4v', 'mpeg', 'mov', 'webm', 'doc', 'odg', 'odp', 'ods', 'odt', 'pdf',
    'ppt', 'txt', 'xcf', 'xls', 'csv'];
// The web services API token (Joomla: a user's API token, sent as "Authorization: Bearer ...").
const JL_API_TOKEN = 'joomla-like-api-token';

function jl_root_url(): string
{
    // Joomla's Uri::root(): scheme + host of the request (+ base path, here "/").
    $https = (!empty($_SERVER['HTTPS']) && $_SERVER['HTTPS'] !== 'off')
        || (($_SERVER['HTTP_X_FORWARDED_PROTO'] ?? '') === 'https');
    $host = $_SERVER['HTTP_HOST'] ?? ('127.0.0.1:' . $_SERVER['SERVER_PORT']);
    return ($https ? 'https' : 'http') . '://' . $host . '/';
}

function jl_session(): void
{
    if (session_status() !== PHP_SESSION_ACTIVE) {
        session_name('joomla_like_admin');
        session_save_path(sys_get_temp_dir());
        session_start();
    }
}

function jl_token(): string
{
    // Joomla's Session::getFormToken(): md5 of a per-session secret; sent as NAME=1.
    jl_session();
    if (empty($_SESSION['token'])) {
        $_SESSION['token'] = bin2hex(random_bytes(16));
    }
    return md5('joomla-like' . $_SESSION['token']);
}

/** Session::checkToken('request' | 'post' | 'json'): the token is a parameter name with value 1. */
function jl_check_token(string $method, ?array $json = null): bool
{
    $t = jl_token();
    if ($method === 'json') {
        return ($json[$t] ?? null) == '1' || ($_SERVER['HTTP_X_CSRF_TOKEN'] ?? '') === $t;
    }
    return ($_REQUEST[$t] ?? null) == '1' || ($_SERVER['HTTP_X_CSRF_TOKEN'] ?? '') === $t;
}

/** File::makeSafe + punycode-free subset: what Joomla keeps of a file name. */
function jl_safe_name(string $name): string
{
    $name = preg_replace(['#(\.){2,}#', '#[^A-Za-z0-9\.\_\- ]#', '#^\.#'], '', basename($name));
    $ext = strtolower(pathinfo($name, PATHINFO_EXTENSION));
    $stem = $ext === '' ? $name : substr($name, 0, -strlen($ext) - 1);
    return $ext === '' ? $stem : $stem . '.' . $ext;
}

/** Cleans a folder path relative to images/ ("/", "/sub/dir"); null if it leaves images/. */
function jl_clean_path(string $path): ?string
{
    $path = '/' . trim(str_replace('\\', '/', $path), '/');
    foreach (explode('/', $path) as $seg) {
        if ($seg === '..' || $seg === '.') {
            return null;
        }
    }
    return preg_replace('#/+#', '/', $path);
}

/** "local-images:/sub/x.jpg" -> ["local-images", "/sub/x.jpg"]. */
function jl_split_adapter(string $path): array
{
    if (strpos($path, ':') !== false) {
        [$adapter, $rel] = explode(':', $path, 2);
        return [$adapter, $rel === '' ? '/' : $rel];
    }
    return [JL_ADAPTER, $path === '' ? '/' : $path];
}

function jl_is_media_file(string $path): bool
{
    $ext = strtolower(pathinfo($path, PATHINFO_EXTENSION));
    return $ext !== '' && in_array($ext, JL_EXTENSIONS, true);
}

function jl_mime(string $file): string
{
    $map = ['jpg' => 'image/jpeg', 'jpeg' => 'image/jpeg', 'png' => 'image/png', 'gif' => 'image/gif',
        'webp' => 'image/webp', 'svg' => 'image/svg+xml', 'pdf' => 'application/pdf', 'mp4' => 'video/mp4',
        'mp3' => 'audio/mpeg', 'txt' => 'text/plain', 'bmp' => 'image/bmp', 'avif' => 'image/avif'];
    return $map[strtolower(pathinfo($file, PATHINFO_EXTENSION))] ?? 'application/octet-stream';
}

/** LocalAdapter::getPathInformation + ApiModel::getFile (path gets the adapter prefix). */
function jl_file_info(string $rel, bool $withUrl = false): array
{
    $abs = JL_IMAGES . $rel;
    $isDir = is_dir($abs);
    $name = basename($rel);
    $c = filectime($abs);
    $m = filemtime($abs);
    $info = [
        'type' => $isDir ? 'dir' : 'file',
        'name' => $name,
        'path' => JL_ADAPTER . ':' . $rel,
        'extension' => $isDir ? '' : strtolower(pathinfo($name, PATHINFO_EXTENSION)),
        'size' => $isDir ? '' : filesize($abs),
        'mime_type' => $isDir ? 'directory' : jl_mime($name),
        'width' => 0,
        'height' => 0,
        'create_date' => date('c', $c),
        'create_date_formatted' => date('Y-m-d H:i', $c),
        'modified_date' => date('c', $m),
        'modified_date_formatted' => date('Y-m-d H:i', $m),
    ];
    if (!$isDir && preg_match('/^image\//', $info['mime_type'])) {
        $size = @getimagesize($abs);
        if ($size) {
            $info['width'] = $size[0];
            $info['height'] = $size[1];
        }
        // LocalAdapter::getUrl(): Uri::root() . 'images' . path, spaces as %20
        $info['thumb_path'] = jl_root_url() . str_replace(' ', '%20', 'images' . $rel);
    }
    if ($withUrl && !$isDir) {
        $info['url'] = jl_root_url() . str_replace(' ', '%20', 'images' . $rel);
    }
    $info['adapter'] = JL_ADAPTER;
    return $info;
}

function jl_list(string $rel, bool $withUrl = false): array
{
    $abs = JL_IMAGES . $rel;
    $out = [];
    $dirs = [];
    $files = [];
    foreach (scandir($abs) as $e) {
        if ($e[0] === '.' || $e === 'index.html') {
            continue;
        }
        is_dir("$abs/$e") ? $dirs[] = $e : $files[] = $e;
    }
    foreach ($dirs as $d) {
        $out[] = jl_file_info(rtrim($rel, '/') . '/' . $d, $withUrl);
    }
    foreach ($files as $f) {
        if (jl_is_media_file($f)) {
            $out[] = jl_file_info(rtrim($rel, '/') . '/' . $f, $withUrl);
        }
    }
    return $out;
}

/** Joomla\CMS\Response\JsonResponse: {"success":..,"message":..,"messages":..,"data":..}. */
function jl_json_response($data, int $status = 200, ?string $message = null): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    $ok = $status < 400;
    echo json_encode([
        'success' => $ok,
        'message' => $message,
        'messages' => null,
        'data' => $ok ? $data : null,
    ]);
}

<?php
/*
 * joomla-like administrator: the two ways Joomla's media manager uploads.
 *
 * Joomla 3 (administrator/components/com_media/controllers/file.php, file.json.php):
 *   POST /administrator/index.php?option=com_media&task=file.upload&tmpl=component&TOKEN=1
 *        multipart: Filedata[] (one or more files), folder (relative to images/), return-url
 *   -> 303 See Other to index.php?option=com_media&folder=FOLDER (message in the session);
 *   with &format=json (Flash/XHR uploader, field Filedata):
 *   -> {"status":"1","message":"Upload of \"/images/x.jpg\" successful.","error":...,"location":"/images/x.jpg"}
 *
 * Joomla 4/5 (administrator/components/com_media/src/Controller/ApiController.php):
 *   POST /administrator/index.php?option=com_media&format=json&task=api.files&path=local-images:/FOLDER
 *        JSON: {"TOKEN":"1","name":"x.jpg","content":"<base64>","override":true?}
 *   -> 200 {"success":true,"message":null,"messages":null,"data":{file info}}; 409 if it exists
 *   GET  ...&task=api.files&path=local-images:/FOLDER[&url=1] -> list
 *
 * GET /administrator/index.php?option=com_media shows the J3 upload form and the J4 script
 * options (csrf.token, com_media.apiBaseUrl) so a client can find the token like a browser.
 * There is no login: the session is always an administrator's.
 */
require __DIR__ . '/../lib/common.php';
jl_session();
$token = jl_token();
$option = $_GET['option'] ?? '';
$task = $_REQUEST['task'] ?? '';
$format = $_REQUEST['format'] ?? 'html';
$method = $_SERVER['REQUEST_METHOD'];

if ($option !== 'com_media') {
    header('Content-Type: text/html; charset=utf-8');
    echo "<!DOCTYPE html><html><head><title>joomla-like - Administration</title></head><body>"
        . "<a href=\"index.php?option=com_media\">Media</a></body></html>\n";
    return;
}

// ---------------------------------------------------------------- Joomla 4/5: task=api.files
if ($task === 'api.files') {
    [$adapter, $rel] = jl_split_adapter($_GET['path'] ?? (JL_ADAPTER . ':/'));
    $rel = jl_clean_path($rel);
    if ($adapter !== JL_ADAPTER || $rel === null) {
        jl_json_response(null, 400, 'Invalid path');
        return;
    }
    if ($method === 'GET') {
        $abs = JL_IMAGES . $rel;
        if (!file_exists($abs)) {
            jl_json_response(null, 404, 'File not found');
            return;
        }
        $url = !empty($_GET['url']);
        jl_json_response(is_dir($abs) ? jl_list($rel, $url) : jl_file_info($rel, $url));
        return;
    }
    $body = json_decode(file_get_contents('php://input'), true) ?: [];
    if (!jl_check_token('json', $body)) {
        jl_json_response(null, 403, 'The most recent request was denied because it had an invalid security token. Please refresh the page and try again.');
        return;
    }
    if ($method !== 'POST') {
        jl_json_response(null, 405, "The requested task ($task) was not found.");
        return;
    }
    $name = jl_safe_name((string)($body['name'] ?? ''));
    $content = base64_decode((string)($body['content'] ?? ''), true);
    // File::write() creates missing folders
    if ($content === false || $content === '') {
        // no content: a folder is created
        $target = rtrim($rel, '/') . '/' . $name;
        if (file_exists(JL_IMAGES . $target) && empty($body['override'])) {
            jl_json_response(null, 409, 'File exists');
            return;
        }
        @mkdir(JL_IMAGES . $target, 0777, true);
        jl_json_response(jl_file_info($target));
        return;
    }
    $target = rtrim($rel, '/') . '/' . $name;
    if (!jl_is_media_file($target)) {
        jl_json_response(null, 400, 'Invalid path');
        return;
    }
    if (file_exists(JL_IMAGES . $target) && empty($body['override'])) {
        jl_json_response(null, 409, 'File exists');
        return;
    }
    @mkdir(dirname(JL_IMAGES . $target), 0777, true);
    file_put_contents(JL_IMAGES . $target, $content);
    jl_json_response(jl_file_info($target));
    return;
}

// ---------------------------------------------------------------- Joomla 3: task=file.upload
if ($task === 'file.upload') {
    $folder = jl_clean_path((string)($_REQUEST['folder'] ?? ''));
    if ($format === 'json') {
        // file.json.php: one file in "Filedata"; always HTTP 200, status "1"/"0" in the body
        header('Content-Type: application/json; charset=utf-8');
        $fail = function (string $msg, array $extra = []) {
            echo json_encode(['status' => '0', 'message' => $msg, 'error' => $msg] + $extra);
        };
        if (!jl_check_token('request')) {
            $fail('Invalid Token');
            return;
        }
        $f = $_FILES['Filedata'] ?? null;
        if (is_array($f) && is_array($f['name'] ?? null)) {
            $f = ['name' => $f['name'][0], 'tmp_name' => $f['tmp_name'][0], 'error' => $f['error'][0], 'size' => $f['size'][0]];
        }
        if (!$f || !isset($f['name']) || $folder === null) {
            $fail('Bad Request');
            return;
        }
        $parts = pathinfo(jl_safe_name($f['name']));
        $safe = preg_replace(['/\s/', '/[^a-zA-Z0-9_\-]/'], ['_', ''], $parts['filename']) . '.' . strtolower($parts['extension'] ?? '');
        $rel = rtrim($folder, '/') . '/' . $safe;
        if ($f['error'] !== UPLOAD_ERR_OK || !jl_is_media_file($safe)) {
            $fail('Unable to upload file.');
            return;
        }
        if (file_exists(JL_IMAGES . $rel)) {
            $fail('A file with this name already exists.', ['location' => '/images' . $rel]);
            return;
        }
        move_uploaded_file($f['tmp_name'], JL_IMAGES . $rel);
        $loc = '/images' . $rel;
        $msg = 'Upload of "' . $loc . '" successful.';
        echo json_encode(['status' => '1', 'message' => $msg, 'error' => $msg, 'location' => $loc]);
        return;
    }
    // file.php: redirect back to the media manager with a message in the session
    if (!jl_check_token('request')) {
        header('Content-Type: text/html; charset=utf-8');
        echo 'Invalid Token';   // jexit(JText::_('JINVALID_TOKEN'))
        return;
    }
    $folderParam = trim((string)($_REQUEST['folder'] ?? ''), '/');
    $return = isset($_POST['return-url']) ? base64_decode($_POST['return-url']) : '';
    $redirect = ($return && strpos($return, 'index.php') === 0 ? $return : 'index.php?option=com_media') . '&folder=' . $folderParam;
    $_SESSION['messages'] = [];
    $files = $_FILES['Filedata'] ?? null;
    if ($folder === null || !$files || !is_array($files['name'])) {
        $_SESSION['messages'][] = ['error', 'Invalid Request'];
    } else {
        @mkdir(JL_IMAGES . $folder, 0777, true);
        foreach ($files['name'] as $i => $n) {
            $safe = str_replace(' ', '-', jl_safe_name($n));
            $rel = rtrim($folder, '/') . '/' . $safe;
            if ($files['error'][$i] !== UPLOAD_ERR_OK) {
                $_SESSION['messages'][] = ['warning', 'This file is too large to upload.'];
                break;
            }
            if (file_exists(JL_IMAGES . $rel)) {
                $_SESSION['messages'][] = ['warning', 'A file with this name already exists.'];
                break;
            }
            if (!jl_is_media_file($safe)) {
                $_SESSION['messages'][] = ['warning', 'This file type is not supported.'];
                break;
            }
            move_uploaded_file($files['tmp_name'][$i], JL_IMAGES . $rel);
            // COM_MEDIA_UPLOAD_COMPLETE with the path relative to COM_MEDIA_BASE
            $_SESSION['messages'][] = ['message', 'Upload of "' . $rel . '" successful.'];
        }
    }
    // JApplicationWeb::redirect() makes the URL absolute (Uri::base()) before sending it
    header('Location: ' . jl_root_url() . 'administrator/' . $redirect, true, 303);
    return;
}

// ---------------------------------------------------------------- the media manager page
$folder = jl_clean_path((string)($_GET['folder'] ?? '')) ?? '/';
$messages = $_SESSION['messages'] ?? [];
unset($_SESSION['messages']);
$root = jl_root_url();
$options = [
    'csrf.token' => $token,
    'com_media' => [
        'apiBaseUrl' => $root . 'administrator/index.php?option=com_media&format=json',
        'csrfToken' => $token,
        'filePath' => 'images',
        'fileBaseUrl' => $root . 'images',
        'fileBaseRelativeUrl' => 'images',
        'currentPath' => JL_ADAPTER . ':' . $folder,
    ],
];
header('Content-Type: text/html; charset=utf-8');
$h = fn($s) => htmlspecialchars((string)$s, ENT_QUOTES);
?>
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Media - joomla-like - Administration</title>
<script type="application/json" class="joomla-script-options new"><?= json_encode($options) ?></script>
</head><body>
<div id="system-message-container"><?php foreach ($messages as [$type, $text]): ?>
<div class="alert alert-<?= $h($type) ?>"><?= $h($text) ?></div><?php endforeach; ?></div>
<form action="index.php?option=com_media&amp;task=file.upload&amp;tmpl=component&amp;<?= $h($token) ?>=1" id="uploadForm" name="uploadForm" method="post" enctype="multipart/form-data">
<input type="file" id="upload-file" name="Filedata[]" multiple>
<input class="update-folder" type="hidden" name="folder" id="folder" value="<?= $h(ltrim($folder, '/')) ?>">
<input type="hidden" name="return-url" value="<?= $h(base64_encode('index.php?option=com_media')) ?>">
<button id="upload-submit">Start Upload</button>
</form>
<ul class="manager"><?php foreach (jl_list($folder) as $item): ?>
<li><?php if ($item['type'] === 'file'): ?><img src="<?= $h($root . 'images' . explode(':', $item['path'], 2)[1]) ?>" alt="<?= $h($item['name']) ?>" width="80"><?php else: ?><?= $h($item['name']) ?>/<?php endif; ?></li><?php endforeach; ?>
</ul>
</body></html>
